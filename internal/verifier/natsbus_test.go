package verifier

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/testfix/freeport"
)

// testNATS is a real embedded nats-server listening on loopback, so that it
// can be stopped and restarted on the same port and store while clients
// reconnect.
type testNATS struct {
	t    testing.TB
	dir  string
	port int
	emb  *natsbus.Embedded
	url  string
	// maxPayload is the server's max_payload, 0 for the default.
	maxPayload int32
}

func startNATS(t testing.TB) *testNATS {
	t.Helper()
	return startNATSMax(t, 0)
}

// startNATSMax is startNATS with the server's max_payload set (0: default).
func startNATSMax(t testing.TB, maxPayload int32) *testNATS {
	t.Helper()
	// Restarts (n.stop, n.start) keep the port: one from below the
	// kernel's ephemeral range, which no other test's listener can take
	// while the server is down (see freeport).
	port, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	n := &testNATS{t: t, dir: t.TempDir(), port: port, maxPayload: maxPayload}
	n.start()
	t.Cleanup(func() {
		if n.emb != nil {
			n.emb.Shutdown()
		}
	})
	return n
}

func (n *testNATS) start() {
	n.t.Helper()
	emb, err := natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: n.dir, Listen: true, Port: n.port, MaxPayload: n.maxPayload})
	if err != nil {
		n.t.Fatal(err)
	}
	n.emb, n.url = emb, emb.ClientURL()
}

// creds is the credentials file the embedded server made in its data dir.
func (n *testNATS) creds() string { return filepath.Join(n.dir, "user.nk") }

func (n *testNATS) stop() {
	n.emb.Shutdown()
	n.emb = nil
}

func (n *testNATS) connect(ctx context.Context) bus.Bus { return n.connectNATS(ctx) }

func (n *testNATS) connectNATS(ctx context.Context) *natsbus.Bus {
	n.t.Helper()
	b, err := natsbus.New(ctx, natsbus.Config{URL: n.url, CredsFile: n.creds(), PublishTimeout: time.Second, Partitions: 4})
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

// collectEvents reads event batches until want distinct event ids arrived
// (or the deadline), and returns how often each id was seen.
func collectEvents(t testing.TB, ctx context.Context, b bus.Bus, want int, deadline time.Duration) map[string]int {
	t.Helper()
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "test-" + strconv.FormatInt(time.Now().UnixNano(), 36)})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close(context.Background())
	seen := map[string]int{}
	batches := map[string]bool{}
	var batch event.Batch
	dupBatches := 0
	end := time.Now().Add(deadline)
	for len(seen) < want && time.Now().Before(end) {
		ds, err := cons.Fetch(ctx, 100, 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if err := event.DecodeBatch(d.Data, &batch); err != nil {
				t.Fatalf("batch %s: %v", d.BatchID, err)
			}
			// The batch id is the deduplication key: NATS drops a re-published
			// batch itself; on Kafka the consumer (the aggregator) skips it.
			if batches[batch.ID] {
				dupBatches++
			} else {
				batches[strings.Clone(batch.ID)] = true
				for i := range batch.Events {
					seen[strings.Clone(batch.Events[i].ID)]++
				}
			}
			if err := cons.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Give stragglers (duplicates) a moment to show up.
	ds, _ := cons.Fetch(ctx, 1000, 500*time.Millisecond)
	for _, d := range ds {
		if err := event.DecodeBatch(d.Data, &batch); err == nil {
			if batches[batch.ID] {
				dupBatches++
				continue
			}
			for i := range batch.Events {
				seen[strings.Clone(batch.Events[i].ID)]++
			}
		}
	}
	t.Logf("%d batches, %d re-delivered batch ids skipped", len(batches), dupBatches)
	return seen
}

func checkExactlyOnce(t *testing.T, seen map[string]int, want int) {
	t.Helper()
	dups := 0
	for id, n := range seen {
		if n != 1 {
			dups++
			if dups < 5 {
				t.Errorf("event %s arrived %d times", id, n)
			}
		}
	}
	if len(seen) != want || dups > 0 {
		t.Fatalf("%d distinct events arrived (want %d), %d duplicated", len(seen), want, dups)
	}
}
