package bench

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

func chaosStore(t *testing.T, name string) *store.DB {
	t.Helper()
	db, err := chdb.Open(chdb.Config{DataDir: t.TempDir(), Database: name})
	if err != nil {
		t.Fatalf("open chdb (CHDB_LIB_PATH=%q): %v", os.Getenv("CHDB_LIB_PATH"), err)
	}
	t.Cleanup(func() { _ = db.Close(context.Background()) })
	if _, err := db.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return db
}

// runChaos runs the short chaos scenario on bus: 3 cluster nodes on the
// shipped config, 3 aggregators, 2 verifiers, one kill of each kind (an
// aggregator with no graceful flush, the events' leader node with SIGKILL,
// a verifier), a key revoked while the node is down.
func runChaos(t *testing.T, busName string, events int) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	tl := newTlog(t)
	res, err := RunChaos(ctx, ChaosConfig{Bus: busName, Store: chaosStore(t, "chaos_"+busName), Dir: t.TempDir(),
		Events: events, Kills: 3, Rate: float64(events) / 30, Output: Output{Out: &out, Progress: tl},
		Logger: slog.New(slog.NewTextHandler(tl, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	t.Logf("%s", strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	if res.Kills != 3 || res.BusKills != 1 {
		t.Fatalf("kills=%d bus kills=%d, want 3 and 1", res.Kills, res.BusKills)
	}
	if res.RevokeMS < 0 {
		t.Fatal("no revocation during the outage")
	}
	if !res.OK() || res.Answered < int64(events) || res.Distinct < uint64(events) {
		t.Fatalf("answered=%d stored=%d lost=%d duplicated=%d extra=%d", res.Answered, res.Distinct, res.Lost, res.Duplicated, res.Extra)
	}
	if !strings.Contains(out.String(), fmt.Sprintf("lost=0 duplicated=0")) {
		t.Fatalf("summary line: %s", out.String())
	}
}

// TestChaosNATSCluster: three Debian nats-server on the shipped
// nats-server.conf, streams and key bucket with 3 replicas. The node
// leading the events stream is killed with SIGKILL under traffic and
// restarted: verifiers keep answering and learn a revocation made while
// it is down, and every answered request's event is stored exactly once.
func TestChaosNATSCluster(t *testing.T) {
	runChaos(t, "nats", 6000)
}

// TestChaosKafkaCluster: three KRaft brokers on the shipped
// server.properties (replication factor 3, min.insync.replicas 2,
// acks=all). The leader of the events' partition 0 is killed with SIGKILL
// under traffic and restarted: nothing lost or doubled.
func TestChaosKafkaCluster(t *testing.T) {
	runChaos(t, "kafka", 6000)
}

// tlog writes progress lines to the test log as they come, until the
// test ends: a goroutine of the run that outlives it (an aggregator that
// did not stop within 30 s of its cancel, a bus client's late callback)
// must not log to a finished test, which panics once the package's tests
// are all done.
type tlog struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func newTlog(t *testing.T) *tlog {
	w := &tlog{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

func (w *tlog) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}
