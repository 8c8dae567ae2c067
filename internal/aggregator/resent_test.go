package aggregator_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// testBus is a bus the aggregator consumes and the test publishes to.
type testBus interface {
	aggregator.Bus
	Publisher() bus.Publisher
	Close(context.Context) error
}

// resentEnv is one bus (a fresh Kafka topic set or NATS stream) and one
// store, with aggregators of group "g" started and stopped on them.
type resentEnv struct {
	t      *testing.T
	kafka  bool
	newBus func() testBus
	prod   testBus
	db     *store.DB
	now    time.Time
	grace  time.Duration // aggregators' ShutdownGrace
}

func newResentEnv(t *testing.T, onKafka bool) *resentEnv {
	e := &resentEnv{t: t, kafka: onKafka, db: newStore(t), now: time.Now().UTC().Truncate(time.Millisecond), grace: 5 * time.Second}
	if onKafka {
		brokers := kafkaBrokers(t)
		prefix := fmt.Sprintf("resent%d.", time.Now().UnixNano()%1_000_000_000)
		e.newBus = func() testBus {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			b, err := kafkabus.New(ctx, kafkabus.Config{Brokers: brokers, TopicPrefix: prefix, Partitions: 2, SessionTimeout: 6 * time.Second},
				kafkabus.WithLogger(slog.New(slog.DiscardHandler)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close(context.Background()) })
			return b
		}
	} else {
		b := newBus(t)
		e.newBus = func() testBus { return b }
	}
	e.prod = e.newBus()
	return e
}

// batch is batch id's n events (ids "<events>-e<i>") of one key.
func (e *resentEnv) batch(id, events string, n int, resent bool) bus.Message {
	eb := event.Batch{ID: id, Producer: "v1", Created: e.now}
	for j := range n {
		eb.Events = append(eb.Events, event.Event{ID: fmt.Sprintf("%s-e%d", events, j), Time: e.now.Add(time.Duration(j) * time.Millisecond),
			Project: "p", KeyID: "key_a", Outcome: event.OutcomeValid, ClientIP: "198.51.100.1", Status: 200, Route: "/r"})
	}
	return bus.Message{Key: "key_a", BatchID: id, Source: "v1", Data: event.AppendBatch(nil, &eb), Resent: resent}
}

func (e *resentEnv) publish(ms ...bus.Message) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range ms {
		if _, err := e.prod.Publisher().Publish(ctx, m); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := e.prod.Publisher().Flush(ctx); err != nil {
		e.t.Fatal(err)
	}
}

// run starts an aggregator of group g on its own bus client (Kafka: its
// own group membership) over s; stop ends it gracefully.
func (e *resentEnv) run(s aggregator.Store) (stop func()) {
	b := e.newBus()
	a, err := aggregator.New(aggregator.Config{Group: "g", FlushInterval: 100 * time.Millisecond, ShutdownGrace: e.grace,
		RetryBackoff: 20 * time.Millisecond}, b, s, aggregator.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("aggregator: %v", err)
		}
	}
}

// waitStored waits until the events of id prefix events are stored (the
// sentinel published after what is under test, in the same partition).
func (e *resentEnv) waitStored(events string, n int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		rows, err := e.db.Conn().Query(ctx, "SELECT toUInt64(count()) FROM `"+e.db.Database()+"`.requests WHERE startsWith(event_id, {p:String})",
			store.Params{}.Str("p", events+"-e"))
		if err != nil {
			e.t.Fatal(err)
		}
		var got uint64
		for rows.Next() {
			_ = rows.Scan(&got)
		}
		rows.Close()
		if got >= uint64(n) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("events %s-* not stored within 90s", events)
}

// stored is the number of rows and of distinct event ids stored.
func (e *resentEnv) stored() (rows, distinct uint64) {
	e.t.Helper()
	r, err := e.db.Conn().Query(context.Background(), "SELECT toUInt64(count()), toUInt64(uniqExact(event_id)) FROM `"+e.db.Database()+"`.requests", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	defer r.Close()
	for r.Next() {
		if err := r.Scan(&rows, &distinct); err != nil {
			e.t.Fatal(err)
		}
	}
	return rows, distinct
}

// TestResentBatchAfterAggregatorRestartStoredOnce is finding 1 of the
// review: a verifier's batch reaches the bus and is stored, its ack is never
// delivered, the verifier dies; the aggregator restarts (deploy, crash,
// rebalance: its recent batch ids are gone) before the verifier comes back
// and publishes the batch again, marked Resent, on Kafka under the same
// batch id (Kafka keeps both), on NATS under another one (its duplicate
// window has the first id; the verifier's recovery uses a new id too).
// Variant "first block": the copy is not marked (a Kafka producer's retry)
// but lands in the first block of the restarted aggregator. Before the
// fix: stored 2n rows for n events.
func TestResentBatchAfterAggregatorRestartStoredOnce(t *testing.T) {
	for _, onKafka := range []bool{true, false} {
		name := map[bool]string{true: "kafka", false: "nats"}[onKafka]
		for _, variant := range []string{"resent", "first-block"} {
			t.Run(name+"/"+variant, func(t *testing.T) {
				e := newResentEnv(t, onKafka)
				const n = 300
				stop1 := e.run(e.db)
				e.publish(e.batch("b1", "v1", n, false))
				e.waitStored("v1", n)
				stop1() // the aggregator restarts before the verifier is back
				again := e.batch("b1", "v1", n, variant == "resent")
				if !onKafka {
					again.BatchID = "v1-e0.t" // past NATS's duplicate window: another id
				}
				if variant == "first-block" {
					e.publish(again, e.batch("s1", "s1", 5, false))
				}
				stop2 := e.run(e.db)
				defer stop2()
				if variant == "resent" {
					// The restarted aggregator's first block is behind it.
					e.publish(e.batch("w1", "w1", 5, false))
					e.waitStored("w1", 5)
					e.publish(again, e.batch("s1", "s1", 5, false))
				}
				e.waitStored("s1", 5) // after the copy, in its partition
				rows, distinct := e.stored()
				want := uint64(n + 5)
				if variant == "resent" {
					want += 5
				}
				t.Logf("events=%d stored rows=%d distinct ids=%d", want, rows, distinct)
				if rows != want || distinct != want {
					t.Fatalf("stored %d rows (%d distinct ids) for %d events", rows, distinct, want)
				}
			})
		}
	}
}

// dyingStore: once dead, an insert never happens (the member dies in it).
type dyingStore struct {
	*store.DB
	dead atomic.Bool
}

func (s *dyingStore) InsertEvents(ctx context.Context, tok string, ev []event.Event) error {
	if s.dead.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.DB.InsertEvents(ctx, tok, ev)
}

// TestReplayDropsDuplicateTheLiveFlushDropped is finding 3 of the review: a
// batch delivered twice on Kafka (a producer's retry) is dropped live by its
// batch id, but the member dies after recording the intent of the block and
// before inserting it; the member that replays the intent reads the range
// back, where the copy is, and must drop it too. Before the fix: stored 30
// rows for 20 events.
func TestReplayDropsDuplicateTheLiveFlushDropped(t *testing.T) {
	e := newResentEnv(t, true)
	e.grace = time.Nanosecond // the dead member's flush ends with it
	ds := &dyingStore{DB: e.db}
	stop1 := e.run(ds)
	e.publish(e.batch("x", "x", 10, false))
	e.waitStored("x", 10)
	ds.dead.Store(true)                                                   // the member dies inside its next insert
	e.publish(e.batch("x", "x", 10, false), e.batch("y", "y", 10, false)) // x again (same batch id), then y
	// The intent of [x again, y] (offsets 1-2) is recorded; the insert never happens.
	waitIntents(t, e.db, "g", func(ins []store.Intent) bool {
		for _, in := range ins {
			if in.First >= 1 {
				return true
			}
		}
		return false
	})
	stop1()
	stop2 := e.run(e.db) // the next member replays the pending intent
	defer stop2()
	waitIntents(t, e.db, "g", func(ins []store.Intent) bool { return len(ins) == 0 })
	e.waitStored("y", 10)
	rows, distinct := e.stored()
	q, err := e.db.QuotaUsage(context.Background(), "key_a", e.now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("events=20 stored rows=%d distinct ids=%d rollup requests=%d", rows, distinct, q.Requests)
	if rows != 20 || distinct != 20 || q.Requests != 20 {
		t.Fatalf("stored %d rows (%d distinct ids), rollups count %d, for 20 events", rows, distinct, q.Requests)
	}
}

// waitIntents waits until group's pending intents are as ok wants.
func waitIntents(t *testing.T, db *store.DB, group string, ok func([]store.Intent) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		ins, err := db.Intents(ctx, group)
		if err != nil {
			t.Fatal(err)
		}
		if ok(ins) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("pending intents of %s not as expected within 90s", group)
}

// fencedDuringInsert fails every insert; at the first, a newer generation
// fences the group (another member took the partitions over meanwhile).
type fencedDuringInsert struct {
	*store.DB
	attempts atomic.Int32
}

var errInsertDown = errors.New("store unavailable")

func (s *fencedDuringInsert) InsertEvents(ctx context.Context, tok string, ev []event.Event) error {
	if s.attempts.Add(1) == 1 {
		if err := s.Fence(ctx, "g", 1_000_000); err != nil {
			return err
		}
	}
	return errInsertDown
}

// TestFencedInsertStopsRetrying: a member whose insert fails keeps retrying
// it; once a newer generation has fenced the group, the retry reads the
// fence and gives the flush up (counted as fenced) instead of inserting a
// partition it lost whenever the store comes back. Before the fix it
// retried for ever.
func TestFencedInsertStopsRetrying(t *testing.T) {
	e := newResentEnv(t, true)
	s := &fencedDuringInsert{DB: e.db}
	b := e.newBus()
	a, err := aggregator.New(aggregator.Config{Group: "g", FlushInterval: 100 * time.Millisecond, ShutdownGrace: time.Nanosecond,
		RetryBackoff: 20 * time.Millisecond}, b, s, aggregator.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	e.publish(e.batch("f1", "f1", 10, false))
	deadline := time.Now().Add(60 * time.Second)
	for a.Stats().Fenced == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if a.Stats().Fenced == 0 {
		t.Fatalf("the fenced member still retries its insert after %d attempts", s.attempts.Load())
	}
	if n := s.attempts.Load(); n != 1 {
		t.Fatalf("%d insert attempts, want 1 (the fence is read before the retry)", n)
	}
	if rows, _ := e.stored(); rows != 0 {
		t.Fatalf("stored %d rows", rows)
	}
}

// failRollupConn is the store's connection with every rollup insert failing
// (the process dies between the two inserts of a block).
type failRollupConn struct {
	store.Conn
	attempts atomic.Int32
}

func (c *failRollupConn) InsertRollup(context.Context, string, string, []store.RollupRow) error {
	c.attempts.Add(1)
	return errInsertDown
}

// TestReplayAfterCrashBetweenInsertsCountsRollupOnce: a block's two
// inserts (per-minute rollup, raw rows) are interrupted between them; the
// replay looks its events up by id and must still leave raw rows and
// rollup each stored once. The store writes the rollup first, so stored raw
// rows mean a stored rollup; with the raw rows first, the replay found
// every event stored, inserted nothing, and the rollup was lost.
func TestReplayAfterCrashBetweenInsertsCountsRollupOnce(t *testing.T) {
	e := newResentEnv(t, false)
	e.grace = time.Nanosecond
	fc := &failRollupConn{Conn: e.db.Conn()}
	broken, err := store.NewDB(fc, e.db.Database())
	if err != nil {
		t.Fatal(err)
	}
	stop1 := e.run(broken)
	e.publish(e.batch("r1", "r1", 50, false))
	for deadline := time.Now().Add(60 * time.Second); fc.attempts.Load() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no insert attempted within 60s")
		}
	}
	stop1()
	stop2 := e.run(e.db) // replays the pending intent
	defer stop2()
	waitIntents(t, e.db, "g", func(ins []store.Intent) bool { return len(ins) == 0 })
	e.waitStored("r1", 50)
	rows, _ := e.stored()
	q, err := e.db.QuotaUsage(context.Background(), "key_a", e.now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if rows != 50 || q.Requests != 50 {
		t.Fatalf("stored %d rows, rollups count %d, for 50 events", rows, q.Requests)
	}
}
