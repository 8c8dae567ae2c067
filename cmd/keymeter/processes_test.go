package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/busopen"
	"github.com/keymeter/keymeter/internal/loadgen"
	"github.com/keymeter/keymeter/internal/store/chdb"
	"github.com/keymeter/keymeter/internal/testfix/freeport"
)

// The roles as separate OS processes of the built binary, on an external
// bus: Debian's nats-server, or the Kafka broker. Traffic flows while each
// process is stopped and started again once; afterwards every answered
// request is stored exactly once, and the key the detector caught is refused.
//
// With the embedded store (chDB) only one process may own a data directory,
// so the aggregator owns the store here and the detector and API run with
// --store none (decisions go to the bus, keys come from the bus); with a
// ClickHouse server every role would share it.
func TestRolesAsSeparateProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; not in -short")
	}
	bin := keymeterBinary(t)
	t.Run("nats-server", func(t *testing.T) {
		path, err := exec.LookPath("nats-server")
		if err != nil {
			t.Fatal("nats-server not installed (apt-get install nats-server; .ci/run does)")
		}
		port := freePort(t)
		srv := exec.Command(path, "-js", "-sd", t.TempDir(), "-a", "127.0.0.1", "-p", fmt.Sprint(port))
		srv.Stderr = os.Stderr
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
		waitPort(t, port)
		runRoles(t, bin, []string{"--bus", "nats", "--nats-url", fmt.Sprintf("nats://127.0.0.1:%d", port), "--bus-prefix", fmt.Sprintf("proc%d", port)})
	})
	t.Run("kafka", func(t *testing.T) {
		brokers := os.Getenv("KEYMETER_KAFKA_BROKERS")
		if brokers == "" {
			t.Fatal("KEYMETER_KAFKA_BROKERS is not set: start the broker with deploy/kafka/kafka.sh start (make test does)")
		}
		runRoles(t, bin, []string{"--bus", "kafka", "--kafka-brokers", brokers, "--bus-prefix", fmt.Sprintf("proc%d", time.Now().UnixNano()%1e9)})
	})
}

// freePort is a port for a process started later, and restarted on it,
// from below the kernel's ephemeral range: no other test's listener can
// take it meanwhile (see freeport).
func freePort(t *testing.T) int {
	t.Helper()
	p, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func waitPort(t *testing.T, port int) {
	t.Helper()
	for range 200 {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nothing listens on port %d", port)
}

// role is one keymeter process that can be stopped and started again.
type role struct {
	t    *testing.T
	bin  string
	args []string
	cmd  *exec.Cmd
}

func (r *role) start() {
	r.t.Helper()
	r.cmd = exec.Command(r.bin, r.args...)
	r.cmd.Stdout, r.cmd.Stderr = os.Stderr, os.Stderr
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
}

func (r *role) stop(sig syscall.Signal) {
	_ = r.cmd.Process.Signal(sig)
	_ = r.cmd.Wait()
}

func runRoles(t *testing.T, bin string, busArgs []string) {
	dir := t.TempDir()
	rulesDir, _ := filepath.Abs("../../rules")
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, `{"ok":true}`) }))
	defer upstream.Close()
	apiPort, proxyPort := freePort(t), freePort(t)
	const token = "processes-test-admin-token"
	common := append([]string{"--log-level", "warn", "--partitions", "4"}, busArgs...)
	with := func(args ...string) []string { return append(append([]string{}, args...), common...) }

	apiRole := &role{t: t, bin: bin, args: with("api", "--store", "none", "--listen", fmt.Sprintf("127.0.0.1:%d", apiPort),
		"--admin-token", "admin:"+api.HashToken(token), "--admin-listen", "", "--data-dir", filepath.Join(dir, "api"))}
	verifierRole := &role{t: t, bin: bin, args: with("verifier", "--upstream", upstream.URL, "--listen", fmt.Sprintf("127.0.0.1:%d", proxyPort),
		"--admin-listen", "", "--data-dir", filepath.Join(dir, "verifier"), "--country-header", "CF-IPCountry", "--verifier-id", "v-proc")}
	aggRole := &role{t: t, bin: bin, args: with("aggregator", "--data-dir", filepath.Join(dir, "agg"), "--admin-listen", "", "--flush-interval", "300ms")}
	// The demo key is seconds old: profiles learn for seconds, as in keymeter dev.
	detRole := &role{t: t, bin: bin, args: with("detector", "--store", "none", "--rules", rulesDir, "--admin-listen", "", "--data-dir", filepath.Join(dir, "det"),
		"--profile-maturity", "1s", "--profile-novelty-grace", "5s")}
	roles := []*role{apiRole, verifierRole, aggRole, detRole}
	for _, r := range roles {
		r.start()
	}
	defer func() {
		for _, r := range roles {
			if r.cmd.ProcessState == nil {
				r.stop(syscall.SIGKILL)
			}
		}
	}()
	waitPort(t, apiPort)
	waitPort(t, proxyPort)

	// Keys through the API.
	apiURL := fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	var demo []loadgen.Key
	for i := range 6 {
		var c api.CreatedJSON
		callAPI(t, apiURL, token, "POST", "/v1/keys", map[string]any{"project": "proj_proc", "name": fmt.Sprint(i)}, &c)
		demo = append(demo, loadgen.Key{ID: c.Key.ID, Project: c.Key.Project, Secret: c.Secret})
	}
	victim := demo[0]
	time.Sleep(2 * time.Second) // the verifier picks the keys up from the bus

	// Traffic: normal use, and a geography shift on the victim after 10 s.
	reqs, err := loadgen.Generate(loadgen.Config{Scenarios: []string{"normal", "geo-shift"}, Rate: 100, Duration: 40 * time.Second,
		Seed: 11, Keys: demo, AttackAfter: 10 * time.Second, AttackEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var answered atomic.Int64
	done := make(chan loadgen.Stats, 1)
	go func() {
		st, _ := loadgen.SendHTTP(context.Background(), loadgen.HTTPConfig{Target: fmt.Sprintf("http://127.0.0.1:%d", proxyPort), Workers: 8,
			OnResponse: func(*loadgen.Request, int) { answered.Add(1) }}, reqs)
		done <- st
	}()
	// Each role stopped and started again once while traffic flows. The
	// verifier gets SIGTERM: a verifier killed outright loses the events of
	// its last, unflushed batch (at most --flush-interval of traffic); every
	// other role is killed with SIGKILL.
	for i, r := range []*role{aggRole, detRole, apiRole, verifierRole} {
		time.Sleep(4 * time.Second)
		sig := syscall.SIGKILL
		if r == verifierRole {
			sig = syscall.SIGTERM
		}
		r.stop(sig)
		time.Sleep(500 * time.Millisecond)
		r.start()
		t.Logf("restarted %s (%d/4)", r.args[0], i+1)
	}
	st := <-done
	t.Logf("traffic: %s", st)
	waitPort(t, proxyPort)

	// The caught key is refused by the verifier.
	deadline := time.Now().Add(30 * time.Second)
	var status int
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/v1/items", proxyPort), nil)
		req.Header.Set("Authorization", "Bearer "+victim.Secret)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			status = resp.StatusCode
			resp.Body.Close()
			answered.Add(1)
			if status == http.StatusUnauthorized || status == http.StatusForbidden {
				break
			}
		}
		time.Sleep(time.Second)
	}
	if status != http.StatusUnauthorized && status != http.StatusForbidden {
		t.Fatalf("the key used from six countries is still accepted (status %d)", status)
	}
	var k api.KeyJSON
	callAPI(t, apiURL, token, "GET", "/v1/keys/"+victim.ID, nil, &k)
	if k.Status != "revoked" {
		t.Fatalf("victim key status %q, want revoked", k.Status)
	}

	// Stop the verifier (flushing), let the aggregator drain, then count.
	// Drained is when the bus reports nothing pending for the aggregator's
	// group (stored and acknowledged); a fixed 3 s sleep was too short on a
	// loaded machine. The deadline only bounds a failing test.
	verifierRole.stop(syscall.SIGTERM)
	waitAggregatorDrained(t, busArgs)
	aggRole.stop(syscall.SIGTERM)
	db, err := chdb.Open(chdb.Config{DataDir: filepath.Join(dir, "agg", "clickhouse")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	n, err := db.Count(context.Background(), "requests")
	if err != nil {
		t.Fatal(err)
	}
	if int64(n) != answered.Load() {
		t.Fatalf("store holds %d events, %d requests were answered", n, answered.Load())
	}
}

// waitAggregatorDrained waits, on a connection of its own to the bus the
// roles use (busArgs, with the roles' 4 partitions), until the aggregator's
// consumer group has nothing pending.
func waitAggregatorDrained(t *testing.T, busArgs []string) {
	t.Helper()
	var bc busopen.Config
	fs := pflag.NewFlagSet("bus", pflag.ContinueOnError)
	bc.Bind(fs)
	if err := fs.Parse(append([]string{"--partitions", "4"}, busArgs...)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := busopen.Open(ctx, bc, "", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open the bus to watch the aggregator's lag: %v", err)
	}
	defer b.Close(context.Background())
	if pending, err := bus.WaitDrained(ctx, b, "aggregator", 200*time.Millisecond); pending != 0 || err != nil {
		t.Fatalf("the aggregator did not drain the bus within 2 minutes: %d batches pending (%v)", pending, err)
	}
}

func callAPI(t *testing.T, base, token, method, path string, body, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	var lastErr error
	for range 50 { // the API may be restarting
		req, _ := http.NewRequest(method, base+path, rd)
		req.Header.Set("Authorization", "Bearer "+token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			lastErr = err
			time.Sleep(200 * time.Millisecond)
			continue
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
		}
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("%s %s: %v", method, path, lastErr)
}
