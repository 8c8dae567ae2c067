package natsbus

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymeter/keymeter/internal/testfix/freeport"
)

// A bus that starts its embedded server owns it: started and stopped many
// times in a row on the same data dir (as keymeter dev restarts), each start
// succeeds, the state written before is there, and Close stops the server
// (its port no longer answers).
func TestEmbeddedStartStopRepeatedly(t *testing.T) {
	dir := t.TempDir()
	ec := EmbeddedConfig{DataDir: dir, Listen: true, Port: -1}
	const rounds = 25
	for i := range rounds {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		ec.Listen = i%2 == 0 // in-process only every other time
		if ec.Listen {
			// Not a port the kernel hands out: checked closed after
			// Close below, it must not be another test's listener by then.
			p, err := freeport.Get()
			if err != nil {
				t.Fatal(err)
			}
			ec.Port = p
		}
		b, err := New(ctx, Config{Partitions: 2}, WithEmbeddedServer(ec))
		if err != nil {
			cancel()
			t.Fatalf("start %d: %v", i+1, err)
		}
		if i > 0 {
			ch, err := b.WatchKeys(ctx)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for u := range ch {
				if u.EndOfSnapshot {
					break
				}
				n++
			}
			if n != i {
				t.Fatalf("start %d: %d keys in the log, want %d", i+1, n, i)
			}
		}
		if err := b.PutKey(ctx, "k"+strconv.Itoa(i), []byte("v")); err != nil {
			t.Fatalf("start %d: %v", i+1, err)
		}
		url := b.Embedded().ClientURL()
		if err := b.Close(ctx); err != nil {
			t.Fatalf("close %d: %v", i+1, err)
		}
		cancel()
		if url != "" {
			if c, err := net.Dial("tcp", strings.TrimPrefix(url, "nats://")); err == nil {
				c.Close()
				t.Fatalf("round %d: the server still answers on %s after Close", i+1, url)
			}
		}
	}
}

// A port in use is reported at once with the server's own reason, not as
// a timeout.
func TestEmbeddedPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	_, err = StartEmbedded(EmbeddedConfig{DataDir: t.TempDir(), Listen: true, Port: port, StartTimeout: time.Minute})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("start on a port in use: %v, want the listen error", err)
	}
}

// Every client authenticates; the credentials file is created 0600 and
// refused when others can read it.
func TestEmbeddedCredentials(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds.nk")
	e, err := StartEmbedded(EmbeddedConfig{DataDir: dir, CredsFile: creds, Listen: true, Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(creds)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file mode %04o, want 0600", fi.Mode().Perm())
	}
	// (Over TCP: an in-process client refused waits 10s in nats.go.)
	if nc, err := nats.Connect(e.ClientURL(), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		e.Shutdown()
		t.Fatal("a client without credentials was let in")
	}
	b, err := New(context.Background(), Config{Partitions: 1}, WithEmbedded(e))
	if err != nil {
		t.Fatalf("with the credentials: %v", err)
	}
	_ = b.Close(context.Background())
	e.Shutdown()

	if err := os.Chmod(creds, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := StartEmbedded(EmbeddedConfig{DataDir: dir, CredsFile: creds}); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("credentials readable by others: %v, want a refusal", err)
	}
	if err := os.WriteFile(creds, []byte("not a seed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := StartEmbedded(EmbeddedConfig{DataDir: dir, CredsFile: creds}); err == nil || !strings.Contains(err.Error(), creds) {
		t.Fatalf("credentials file without a seed: %v, want an error naming it", err)
	}
}

// A bus connecting to an embedded server it does not own leaves it running.
func TestSharedEmbeddedOutlivesBus(t *testing.T) {
	e, err := StartEmbedded(EmbeddedConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	ctx := context.Background()
	first, err := New(ctx, Config{Partitions: 1}, WithEmbedded(e))
	if err != nil {
		t.Fatal(err)
	}
	_ = first.Close(ctx)
	second, err := New(ctx, Config{Partitions: 1}, WithEmbedded(e))
	if err != nil {
		t.Fatalf("after another bus closed: %v", err)
	}
	defer second.Close(ctx)
	if err := second.PutKey(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}
