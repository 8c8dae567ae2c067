package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/busopen"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/keys"
)

// devBus opens the bus exactly as keymeter dev does, on a fresh data dir;
// port is --nats-port (-1: any free port, 0: in-process only).
func devBus(t *testing.T, port int) (bus.Bus, string, string) {
	t.Helper()
	dir := t.TempDir()
	o := &devOptions{natsPort: port, natsPortSet: true}
	o.bf = busFlags{busopen.Config{Backend: "nats", Prefix: "keymeter", Partitions: 8, MaxPending: 256, Replicas: 1}}
	o.sf.DataDir = dir
	b, note, err := openDevBus(context.Background(), o, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeSoon(b) })
	return b, note, dir
}

// The embedded NATS server of keymeter dev refuses clients without its
// credentials; the credentials file is 0600; the CLI with --nats-creds
// tails events, and acknowledges every partition it read.
func TestDevNATSRequiresCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs keymeter; not in -short")
	}
	b, note, dir := devBus(t, -1)
	emb := b.(*natsbus.Bus).Embedded()
	url, creds := emb.ClientURL(), natsCredsFile(dir)
	if emb.CredsFile() != creds || !strings.Contains(note, creds) || !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Fatalf("embedded server: url %q creds %q, banner %q; want loopback and %s", url, emb.CredsFile(), note, creds)
	}
	fi, err := os.Stat(creds)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %04o, want 0600", creds, fi.Mode().Perm())
	}

	// No credentials, or another user's: refused.
	if nc, err := nats.Connect(url, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("a client without credentials was let in")
	} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("unauthenticated connect: %v, want an authorization error", err)
	}
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	other := filepath.Join(t.TempDir(), "other.nk")
	if err := os.WriteFile(other, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	opt, err := nats.NkeyOptionFromSeed(other)
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(url, opt, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("a client with another nkey was let in")
	}

	// The CLI with the credentials tails what is published.
	bin := keymeterBinary(t)
	cmd := exec.Command(bin, "logs", "--follow", "--nats-url", url, "--nats-creds", creds, "--duration", "2m", "-o", "json", "--log-level", "warn")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &procOutput{} // read on failure while the process still writes
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const nkeys = 16
	seen := map[string]bool{}
	for round := 0; len(seen) < nkeys; round++ {
		// The tail starts at the end of the log: publish rounds until one
		// arrives whole (every key, so every partition they map to).
		if ctx.Err() != nil {
			t.Fatalf("the CLI tail printed %d of %d events of a round\n%s", len(seen), nkeys, stderr.String())
		}
		clear(seen)
		for k := range nkeys {
			id := fmt.Sprintf("r%d-k%d", round, k)
			eb := event.Batch{ID: id, Producer: "test", Created: time.Now(),
				Events: []event.Event{{ID: id, Time: time.Now(), KeyID: fmt.Sprintf("key_%d", k), Outcome: event.OutcomeValid, Route: "/t", Status: 200}}}
			a, err := b.Publisher().Publish(ctx, bus.Message{Key: eb.Events[0].KeyID, BatchID: id, Source: "test", Data: event.AppendBatch(nil, &eb)})
			if err != nil {
				t.Fatal(err)
			}
			<-a.Done()
		}
		ofRound := regexp.MustCompile(fmt.Sprintf(`"r%d-k[0-9]+"`, round))
		timeout := time.After(3 * time.Second)
	wait:
		for len(seen) < nkeys {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the CLI tail ended early\n%s", stderr.String())
				}
				if id := ofRound.FindString(l); id != "" {
					seen[id] = true
				}
			case <-timeout:
				break wait
			}
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("keymeter logs --follow: %v\n%s", err, stderr.String())
	}

	// Everything it printed is acknowledged, in every partition.
	auth, _ := nats.NkeyOptionFromSeed(creds)
	nc, err := nats.Connect(url, auth)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, "KEYMETER_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	tails := 0
	for ci := range st.ListConsumers(ctx).Info() {
		if !strings.HasPrefix(ci.Name, "logs-follow-") {
			continue
		}
		tails++
		if ci.NumAckPending != 0 {
			t.Errorf("tail consumer %s: %d deliveries unacknowledged", ci.Name, ci.NumAckPending)
		}
	}
	if tails == 0 {
		t.Fatal("no tail consumer found")
	}
}

// keymeter dev's key service writes with compare-and-set on NATS: with its
// table held stale, a change over a newer record is refused
// (ErrRevisionMismatch) instead of overwriting it. The other capabilities
// reach dev's roles too: lag, and the replay of earlier decisions.
func TestDevBusCapabilities(t *testing.T) {
	b, _, _ := devBus(t, 0)
	if b.CompareAndSet() == nil {
		t.Fatal("dev's NATS bus has no compare-and-set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	table, svc, err := keyService(b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	tctx, stopTable := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = table.Run(tctx, b) }()
	<-table.Ready()
	c, err := svc.Create(ctx, keys.CreateParams{Project: "p", Name: "k"})
	if err != nil {
		t.Fatal(err)
	}
	stopTable()
	<-done
	// Another writer changes the key; this process's table does not see it.
	newer := proto.CloneOf(c.State)
	newer.Name = "changed elsewhere"
	newer.Version++
	raw, _ := proto.Marshal(newer)
	if err := b.PutKey(ctx, newer.GetId(), raw); err != nil {
		t.Fatal(err)
	}
	if err := svc.Suspend(ctx, c.State.GetId()); !errors.Is(err, bus.ErrRevisionMismatch) {
		t.Fatalf("suspend over a newer record: %v, want %v (compare-and-set)", err, bus.ErrRevisionMismatch)
	}

	if _, err := b.Lag(ctx, "nobody"); err != nil {
		t.Fatalf("lag: %v", err)
	}
	if err := b.PublishDecision(ctx, "k", []byte("earlier")); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		_ = b.SubscribeDecisionsSince(sctx, time.Now().Add(-time.Hour), func(d []byte) {
			select {
			case got <- string(d):
			default:
			}
		})
	}()
	select {
	case d := <-got:
		if d != "earlier" {
			t.Fatalf("replayed decision %q, want %q", d, "earlier")
		}
	case <-ctx.Done():
		t.Fatal("a decision published before the subscription was not replayed")
	}
}

// keymeter dev's start-up output: one line per kind of thing (not one per
// demo key or per key's first quota state), and the admin token is named by
// its file, never printed.
func TestDevStartupOutput(t *testing.T) {
	if testing.Short() {
		t.Skip("runs keymeter dev; not in -short")
	}
	bin := keymeterBinary(t)
	dir := t.TempDir()
	rules, _ := filepath.Abs("../../rules")
	cmd := exec.Command(bin, "dev", "--data-dir", dir, "--rules", rules, "--nats-port", "-1", "--proxy-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--summary-every", "2s", "--attack-after", "1h", "--rate", "100")
	// It runs a few seconds past its start-up, then stops with SIGTERM: a
	// --duration would count the start-up too, which a loaded machine can
	// stretch past it.
	output := &procOutput{up: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = output, output
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-output.up:
		time.Sleep(4 * time.Second) // traffic flows meanwhile; the checks below are on every line
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			t.Fatalf("keymeter dev: %v\n%s", err, output.String())
		}
	case err := <-exited:
		t.Fatalf("keymeter dev ended before it was up: %v\n%s", err, output.String())
	case <-time.After(2 * time.Minute): // bounds a failing test only
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("keymeter dev not up within 2 minutes:\n%s", output.String())
	}
	text := output.String()
	token, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "admin-token")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin-token mode %04o, want 0600", fi.Mode().Perm())
	}
	if strings.Contains(text, strings.TrimSpace(string(token))) {
		t.Fatalf("the admin token was printed:\n%s", text)
	}
	if !strings.Contains(text, "$(cat "+filepath.Join(dir, "admin-token")+")") {
		t.Fatalf("the banner does not say where the admin token is:\n%s", text)
	}
	msgs := map[string]int{}
	for _, m := range regexp.MustCompile(`msg=("[^"]*"|\S+)`).FindAllStringSubmatch(text, -1) {
		msgs[m[1]]++
	}
	for _, m := range []string{`"key created"`, `"quota state changed"`} {
		if msgs[m] > 0 {
			t.Errorf("%d lines %s at start-up, want none", msgs[m], m)
		}
	}
	if msgs[`"demo keys ready"`] != 1 {
		t.Errorf("%d lines \"demo keys ready\", want 1:\n%s", msgs[`"demo keys ready"`], text)
	}
}

// A NATS port that is taken: dev fails at once with the reason when the
// port was given with --nats-port, and serves in-process only, saying so,
// when it was not.
func TestDevNATSPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, explicit := range []bool{true, false} {
		o := &devOptions{natsPort: port, natsPortSet: explicit}
		o.bf = busFlags{busopen.Config{Backend: "nats", Prefix: "keymeter", Partitions: 2, MaxPending: 64, Replicas: 1}}
		o.sf.DataDir = t.TempDir()
		b, note, err := openDevBus(context.Background(), o, quiet)
		if explicit {
			if err == nil || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), "--nats-port") {
				if b != nil {
					closeSoon(b)
				}
				t.Fatalf("--nats-port %d taken: %v, want the listen error and the flag to change", port, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("default port taken: %v, want in-process only", err)
		}
		url := b.(*natsbus.Bus).Embedded().ClientURL()
		closeSoon(b)
		if url != "" || !strings.Contains(note, "in-process only") || !strings.Contains(note, "is taken") {
			t.Fatalf("default port taken: url %q, banner %q", url, note)
		}
	}
}

// Every listener keymeter dev opens defaults to loopback.
func TestDevListenersDefaultToLoopback(t *testing.T) {
	c := newDevCmd(&globals{})
	n := 0
	c.Flags().VisitAll(func(f *pflag.Flag) {
		if !strings.HasSuffix(f.Name, "-listen") {
			return
		}
		n++
		if !strings.HasPrefix(f.DefValue, "127.0.0.1:") {
			t.Errorf("--%s defaults to %q, not loopback", f.Name, f.DefValue)
		}
	})
	if n < 4 {
		t.Fatalf("found %d --*-listen flags on dev, want at least 4", n)
	}
}

// procOutput collects a process's output, written from exec's copying
// goroutines while the test may read it; up (if not nil) is closed once
// dev's banner is in it.
type procOutput struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	up   chan struct{}
	seen bool
}

func (w *procOutput) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.up != nil && !w.seen && strings.Contains(w.buf.String(), "keymeter dev is running") {
		w.seen = true
		close(w.up)
	}
	return len(p), nil
}

func (w *procOutput) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
