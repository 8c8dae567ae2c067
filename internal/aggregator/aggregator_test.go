package aggregator_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

var (
	dataDir string
	srv     *natsbus.Embedded
	seq     atomic.Int64
)

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "keymeter-aggregator-test-")
	if err != nil {
		panic(err)
	}
	dataDir = d
	srv, err = natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: d + "/nats"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "embedded NATS did not start:", err)
		os.Exit(1)
	}
	code := m.Run()
	srv.Shutdown()
	os.RemoveAll(d)
	os.Exit(code)
}

func newBus(t *testing.T) *natsbus.Bus {
	t.Helper()
	b, err := natsbus.New(context.Background(), natsbus.Config{Prefix: fmt.Sprintf("agg%d", seq.Add(1)), Partitions: 4}, natsbus.WithEmbedded(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

func newStore(t *testing.T) *store.DB {
	t.Helper()
	db, err := chdb.Open(chdb.Config{DataDir: dataDir + "/chdb", Database: fmt.Sprintf("agg_%d", seq.Add(1))})
	if err != nil {
		t.Fatalf("open chdb (CHDB_LIB_PATH=%q): %v", os.Getenv("CHDB_LIB_PATH"), err)
	}
	if _, err := db.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close(context.Background()) })
	return db
}

// produce publishes n events in batches of per over keys keys; returns the
// per-key counts.
func produce(t *testing.T, b bus.Bus, n, per, keys int) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	counts := map[string]int{}
	now := time.Now().UTC().Truncate(time.Second)
	round := seq.Add(1) // ids unique across calls: the bus drops a re-published batch id
	for i := 0; i < n; i += per {
		key := fmt.Sprintf("key_%d", (i/per)%keys)
		eb := event.Batch{ID: fmt.Sprintf("b%d-%d", round, i), Producer: "test", Created: time.Now()}
		for j := i; j < min(i+per, n); j++ {
			eb.Events = append(eb.Events, event.Event{ID: fmt.Sprintf("ev%d-%d", round, j), Time: now.Add(time.Duration(j) * time.Millisecond),
				Project: "proj_a", KeyID: key, Outcome: event.OutcomeValid, ClientIP: "198.51.100.1", Country: "FR", Status: 200, Route: "/r", CostUnits: 1})
			counts[key]++
		}
		if _, err := b.Publisher().Publish(ctx, bus.Message{Key: key, BatchID: eb.ID, Source: "test", Data: event.AppendBatch(nil, &eb)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Publisher().Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return counts
}

func waitCount(t *testing.T, db *store.DB, want uint64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var got uint64
	for time.Now().Before(deadline) {
		var err error
		got, err = db.Count(context.Background(), "requests")
		if err != nil {
			t.Fatal(err)
		}
		if got >= want {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got != want {
		t.Fatalf("store holds %d events, want %d", got, want)
	}
}

func TestExactlyOnceWithBadInput(t *testing.T) {
	b, db := newBus(t), newStore(t)
	counts := produce(t, b, 20_000, 500, 7)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A broken batch and a batch with one invalid event among valid ones.
	if _, err := b.Publisher().Publish(ctx, bus.Message{Key: "key_1", BatchID: "bad-1", Source: "test", Data: []byte("\xff\xffjunk")}); err != nil {
		t.Fatal(err)
	}
	mixed := event.Batch{ID: "mixed", Events: []event.Event{
		{ID: "mixed-ok", Time: time.Now(), KeyID: "key_1", Project: "proj_a", Outcome: event.OutcomeValid},
		{ID: "", Time: time.Now(), KeyID: "key_1", Outcome: event.OutcomeValid}, // no id
	}}
	if _, err := b.Publisher().Publish(ctx, bus.Message{Key: "key_1", BatchID: "mixed", Source: "test", Data: event.AppendBatch(nil, &mixed)}); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher().Flush(ctx); err != nil {
		t.Fatal(err)
	}
	agg, err := aggregator.New(aggregator.Config{FlushInterval: 100 * time.Millisecond}, b, db)
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- agg.Run(actx) }()
	waitCount(t, db, 20_001, 30*time.Second)
	acancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := agg.Stats()
	if st.DeadLettered != 2 {
		t.Fatalf("dead-lettered %d, want 2 (the broken batch and the event without id)", st.DeadLettered)
	}
	dls, err := b.ReadDeadLetters(ctx, 10, time.Second)
	if err != nil || len(dls) != 2 {
		t.Fatalf("dead-letter log: %d entries, err %v", len(dls), err)
	}
	u, err := db.QuotaUsage(ctx, "key_3", time.Now().Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if int(u.Allowed) != counts["key_3"] {
		t.Fatalf("key_3: store counts %d, produced %d", u.Allowed, counts["key_3"])
	}
}

// crashingStore stores a block, then makes the aggregator die before it can
// ack: the worst moment for exactly-once.
type crashingStore struct {
	*store.DB
	crashAfter int32
	inserts    atomic.Int32
	crash      context.CancelFunc
	once       sync.Once
}

var errCrash = errors.New("crash")

func (c *crashingStore) InsertEvents(ctx context.Context, token string, ev []event.Event) error {
	if err := c.DB.InsertEvents(ctx, token, ev); err != nil {
		return err
	}
	if c.inserts.Add(1) >= c.crashAfter {
		c.once.Do(c.crash)
		return errCrash // dead from now on, for this instance
	}
	return nil
}

func TestCrashBetweenInsertAndAckStoresOnce(t *testing.T) {
	b, db := newBus(t), newStore(t)
	const n = 30_000
	produce(t, b, n, 250, 11)
	var replayed uint64
	crashes := 0
	for _, crashAt := range []int32{1, 2, 1} {
		ctx, cancel := context.WithCancel(context.Background())
		cs := &crashingStore{DB: db, crashAfter: crashAt, crash: cancel}
		agg, err := aggregator.New(aggregator.Config{FlushInterval: 50 * time.Millisecond, MaxBlockEvents: 2000, AckWait: time.Second, ShutdownGrace: 100 * time.Millisecond, StopWhenIdle: 2 * time.Second}, b, cs)
		if err != nil {
			t.Fatal(err)
		}
		_ = agg.Run(ctx) // returns after the crash (or, if fewer inserts came, when idle)
		if ctx.Err() != nil {
			crashes++
		}
		cancel()
		replayed += agg.Stats().Replayed
	}
	// A clean instance replays the pending intents and finishes the rest.
	agg, err := aggregator.New(aggregator.Config{FlushInterval: 50 * time.Millisecond, AckWait: time.Second}, b, db)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agg.Run(ctx) }()
	waitCount(t, db, n, 60*time.Second)
	time.Sleep(1500 * time.Millisecond) // redeliveries after AckWait must not add rows
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitCount(t, db, n, time.Second)
	replayed += agg.Stats().Replayed
	// The first instance always dies after its first insert; the others die
	// if enough inserts come their way (a fetch can take the rest at once).
	if crashes < 1 || replayed < 1 {
		t.Fatalf("%d crashes, %d replayed inserts: the crashes did not happen where intended", crashes, replayed)
	}
}

// orderCheckingStore checks, at every insert, that the store already holds
// the pending intents of that insert (recorded by then, in one statement
// with the others of the flush), and that they cover every partition of
// the block.
type orderCheckingStore struct {
	*store.DB
	group      string
	inserts    atomic.Int32
	violations atomic.Int32
	firstErr   atomic.Value // string
}

func (o *orderCheckingStore) InsertEvents(ctx context.Context, token string, ev []event.Event) error {
	o.inserts.Add(1)
	ins, err := o.DB.Intents(ctx, o.group)
	if err != nil {
		return err
	}
	n := 0
	for _, in := range ins {
		if in.Token == token && in.State == store.IntentPending {
			n++
		}
	}
	// The events' keys map to partitions; at least one intent per insert,
	// and as many as the partitions the block holds when it is merged.
	parts := map[string]bool{}
	for _, in := range ins {
		if in.Token == token {
			parts[in.Partition] = true
		}
	}
	if n == 0 || n != len(parts) {
		o.violations.Add(1)
		o.firstErr.CompareAndSwap(nil, fmt.Sprintf("insert %s of %d events: %d pending intents recorded before it", token, len(ev), n))
	}
	return o.DB.InsertEvents(ctx, token, ev)
}

func TestIntentsRecordedBeforeTheirInsertAndClearedAfter(t *testing.T) {
	b, db := newBus(t), newStore(t)
	const n = 12_000
	os := &orderCheckingStore{DB: db, group: "ordered"}
	agg, err := aggregator.New(aggregator.Config{Group: "ordered", FlushInterval: 50 * time.Millisecond, MaxBlockEvents: 3000}, b, os)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	actx, acancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- agg.Run(actx) }()
	for i := 1; i <= 3; i++ { // three rounds: at least three flushes
		produce(t, b, n/3, 300, 9) // 9 keys over 4 partitions: merged blocks
		waitCount(t, db, uint64(i*n/3), 45*time.Second)
	}
	for agg.Stats().Events < n && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond) // the last flush acks after the rows are visible
	}
	// Acked inserts are marked done with the next flush's intents, or once
	// the bus is idle: here, while the aggregator still runs.
	for {
		pending, err := db.Intents(ctx, "ordered")
		if err != nil {
			t.Fatal(err)
		}
		if len(pending) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d intents still pending while idle after every insert was acked", len(pending))
		}
		time.Sleep(50 * time.Millisecond)
	}
	acancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if os.inserts.Load() < 2 {
		t.Fatalf("%d inserts: the test wants several flushes", os.inserts.Load())
	}
	if v := os.violations.Load(); v != 0 {
		t.Fatalf("%d of %d inserts ran before their intents were recorded; first: %v", v, os.inserts.Load(), os.firstErr.Load())
	}
	pending, err := db.Intents(ctx, "ordered")
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 0 {
		t.Fatalf("%d intents still pending after every insert was acked: %+v", len(pending), pending[0])
	}
	committed, err := db.Committed(ctx, "ordered")
	if err != nil {
		t.Fatal(err)
	}
	if len(committed) == 0 {
		t.Fatal("no partition has a done intent after the run")
	}
}

// A block at least half full is inserted once the bus has nothing more for
// it, not after FlushInterval (here ten minutes: the old code stored
// nothing within the minute waitCount allows).
func TestHalfFullBlockFlushedWhenIdle(t *testing.T) {
	b, db := newBus(t), newStore(t)
	agg, err := aggregator.New(aggregator.Config{Group: "idle", FlushInterval: 10 * time.Minute, MaxBlockEvents: 1000}, b, db)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agg.Run(ctx) }()
	produce(t, b, 700, 100, 3)
	waitCount(t, db, 700, time.Minute)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := agg.Stats(); st.Events != 700 {
		t.Fatalf("stats: %d events stored, want 700", st.Events)
	}
}

// The rest of a backlog, less than half a block, is inserted once the bus
// has nothing more when the flush before it filled its block (the end of a
// burst), not after FlushInterval (ten minutes here: the old code stored
// the 300 only then).
func TestRestAfterFullBlockFlushedWhenIdle(t *testing.T) {
	b, db := newBus(t), newStore(t)
	agg, err := aggregator.New(aggregator.Config{Group: "rest", FlushInterval: 10 * time.Minute, MaxBlockEvents: 1000, MaxBurstBlockEvents: 1000}, b, db)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agg.Run(ctx) }()
	produce(t, b, 1000, 1000, 1) // one message: a full block at once
	waitCount(t, db, 1000, time.Minute)
	produce(t, b, 300, 300, 1)
	waitCount(t, db, 1300, time.Minute)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := agg.Stats(); st.Events != 1300 || st.Blocks != 2 {
		t.Fatalf("stats: %d events in %d blocks, want 1300 in 2", st.Events, st.Blocks)
	}
}
