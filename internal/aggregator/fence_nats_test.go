package aggregator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// natsMember is one live aggregator of the group with its own NATS
// connection and partition leases.
type natsMember struct {
	name   string
	paused *atomic.Bool // natsbus.WithLeasePause
	cancel context.CancelFunc
	done   chan error
	bus    *natsbus.Bus
	agg    *aggregator.Aggregator
}

// leaseOwners reads the group's lease table: partition -> member id.
func leaseOwners(t *testing.T, b *natsbus.Bus, prefix, group string) map[int]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	js, err := jetstream.New(b.Conn())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, prefix+"_leases")
	if err != nil {
		return nil
	}
	e, err := kv.Get(ctx, group+".table")
	if err != nil {
		return nil
	}
	var tab struct {
		Owner map[int]string `json:"owner"`
	}
	if err := json.Unmarshal(e.Value(), &tab); err != nil {
		t.Fatal(err)
	}
	return tab.Owner
}

// waitOwners waits until all parts partitions are owned by exactly n
// members, none of them in gone, and returns the owners.
func waitOwners(t *testing.T, b *natsbus.Bus, prefix string, parts, n int, gone map[string]bool) map[int]string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		o := leaseOwners(t, b, prefix, "g")
		ids := map[string]bool{}
		ok := len(o) == parts
		for _, id := range o {
			ids[id] = true
			ok = ok && !gone[id]
		}
		if ok && len(ids) == n {
			return o
		}
		if time.Now().After(deadline) {
			t.Fatalf("partition leases not handed over within 30s: owners %v, want %d live members", o, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestNATSLeaseMembersExactlyOnce: aggregators of one group on NATS share
// the partitions by leases and one store while a member dies (its
// connection closes, no graceful flush, no lease given up), others are
// added, and one pauses past the TTL (still reading) under traffic. The dead member's partitions go to the live ones
// after the lease TTL; per-key counts are exact and no event id is stored
// twice.
func TestNATSLeaseMembersExactlyOnce(t *testing.T) {
	const total, parts, ttl = 60_000, 8, 2 * time.Second
	prefix := fmt.Sprintf("lease%d", seq.Add(1))
	logs := &lockedBuf{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	newNATS := func(opts ...natsbus.Option) *natsbus.Bus {
		b, err := natsbus.New(context.Background(), natsbus.Config{Prefix: prefix, Partitions: parts},
			append(opts, natsbus.WithEmbedded(srv), natsbus.WithLogger(logger))...)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	prod := newNATS()
	defer func() { _ = prod.Close(context.Background()) }()
	db := newStore(t)

	var mu sync.Mutex
	var members []*natsMember
	start := func(name string) *natsMember {
		paused := &atomic.Bool{}
		b := newNATS(natsbus.WithLeasePause(paused))
		a, err := aggregator.New(aggregator.Config{Group: "g", LeaseTTL: ttl, FlushInterval: 200 * time.Millisecond, MaxBlockEvents: 5_000,
			RetryBackoff: 20 * time.Millisecond, ShutdownGrace: time.Nanosecond}, b, slowStore{db, 100 * time.Millisecond},
			aggregator.WithLogger(logger.With("member", name)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		m := &natsMember{name: name, paused: paused, cancel: cancel, done: make(chan error, 1), bus: b, agg: a}
		go func() { m.done <- a.Run(ctx) }()
		mu.Lock()
		members = append(members, m)
		mu.Unlock()
		return m
	}
	stop := func(m *natsMember) {
		m.cancel()
		if err := <-m.done; err != nil {
			t.Errorf("member %s: %v", m.name, err)
		}
		_ = m.bus.Close(context.Background())
	}
	m0, m1, m2 := start("m0"), start("m1"), start("m2")
	before := waitOwners(t, prod, prefix, parts, 3, nil)

	const per, keys = 250, 50
	counts := map[string]int{}
	publish := natsPublisher(t, prod, counts, per, keys)
	q := total / 4
	q -= q % per
	publish(0, q)
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); publish(q, 2*q) }()
	time.Sleep(300 * time.Millisecond)
	// m0 dies while traffic flows: its connection goes first, so it can
	// neither flush nor give up its leases; the others must take them
	// after the TTL.
	died := time.Now()
	m0ids := map[string]bool{}
	for _, id := range before {
		m0ids[id] = true
	}
	m0.bus.Conn().Close()
	m0.cancel()
	<-m0.done
	_ = m0.bus.Close(context.Background())
	after := waitOwners(t, prod, prefix, parts, 2, nil)
	for _, id := range after {
		delete(m0ids, id)
	}
	if len(m0ids) != 1 {
		t.Fatalf("after the kill the partitions went to %v; before %v: want one member gone", after, before)
	}
	t.Logf("dead member's partitions taken over after %s (lease TTL %s)", time.Since(died).Round(10*time.Millisecond), ttl)
	<-pubDone
	m3 := start("m3")
	publish(2*q, 3*q)
	m4 := start("m4")
	waitOwners(t, prod, prefix, parts, 4, m0ids)
	// m1 pauses for longer than the TTL while traffic flows: its heartbeats
	// stop but it still reads its partitions, with pull requests
	// outstanding on the server (a process stopped or starved). The others
	// take its partitions; then it resumes, finds itself fenced and joins
	// again.
	m1.paused.Store(true)
	pubDone = make(chan struct{})
	go func() { defer close(pubDone); publish(3*q, total) }()
	waitOwners(t, prod, prefix, parts, 3, m0ids)
	m1.paused.Store(false)
	<-pubDone

	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		got, err := db.Count(context.Background(), "requests")
		if err != nil {
			t.Fatal(err)
		}
		if got >= total {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second) // a late duplicate insert would show now
	for _, m := range []*natsMember{m1, m2, m3, m4} {
		stop(m)
	}
	var rebal, fenced uint64
	for _, m := range members {
		rebal += m.agg.Stats().Rebalances
		fenced += m.agg.Stats().Fenced
	}
	t.Logf("events=%d members=%d generations entered=%d flushes fenced=%d", total, len(members), rebal, fenced)
	defer func() {
		if t.Failed() {
			leaseDiagnose(t, prod, db, prefix, parts, counts)
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, "nats") || strings.Contains(l, "generation") || strings.Contains(l, "fenced") || strings.Contains(l, "replay") {
					t.Log(l)
				}
			}
		}
	}()
	checkExactlyOnce(t, db, counts, total)
}

// natsPublisher returns a function publishing events [from, to) in
// batches of per over keys keys, counting them per key; calls must not
// overlap.
func natsPublisher(t *testing.T, b bus.Bus, counts map[string]int, per, keys int) func(from, to int) {
	now := time.Now().UTC().Truncate(time.Second)
	pub := b.Publisher()
	return func(from, to int) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for i := from; i < to; i += per {
			key := fmt.Sprintf("key_%d", (i/per)%keys)
			eb := event.Batch{ID: fmt.Sprintf("lb-%d", i), Producer: "test", Created: time.Now()}
			for j := i; j < min(i+per, to); j++ {
				eb.Events = append(eb.Events, event.Event{ID: fmt.Sprintf("le-%d", j), Time: now.Add(time.Duration(j) * time.Microsecond),
					Project: "proj_a", KeyID: key, Outcome: event.OutcomeValid, ClientIP: "198.51.100.1", Status: 200, Route: "/r", CostUnits: 1})
				counts[key]++
			}
			if _, err := pub.Publish(ctx, bus.Message{Key: key, BatchID: eb.ID, Source: "test", Data: event.AppendBatch(nil, &eb)}); err != nil {
				t.Error(err) // may run on another goroutine: no Fatal
				return
			}
		}
		if err := pub.Flush(ctx); err != nil {
			t.Error(err)
		}
	}
}

// checkExactlyOnce fails unless the store holds want rows, no event id
// twice, and exactly counts per key.
func checkExactlyOnce(t *testing.T, db *store.DB, counts map[string]int, want int) {
	t.Helper()
	ctx := context.Background()
	var dups, rows uint64
	r, err := db.Conn().Query(ctx, fmt.Sprintf("SELECT toUInt64(count()), toUInt64(count() - uniqExact(event_id)) FROM %s.requests", db.Database()), store.Params{})
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		if err := r.Scan(&rows, &dups); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	r, err = db.Conn().Query(ctx, fmt.Sprintf("SELECT key_id, toUInt64(count()) FROM %s.requests GROUP BY key_id", db.Database()), store.Params{})
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]int{}
	for r.Next() {
		var k string
		var n uint64
		if err := r.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		stored[k] = int(n)
	}
	r.Close()
	bad := 0
	for k, n := range counts {
		if stored[k] != n {
			bad++
			if bad <= 5 {
				t.Errorf("key %s: stored %d, published %d", k, stored[k], n)
			}
		}
	}
	if rows != uint64(want) || dups != 0 || bad != 0 || len(stored) != len(counts) {
		t.Fatalf("stored %d rows for %d events, %d duplicate event ids, %d keys off", rows, want, dups, bad)
	}
}

func TestLeaseConfigValidate(t *testing.T) {
	bad := []aggregator.Config{
		{LeaseTTL: 10 * time.Second, Partitions: []int{0}},
		{LeaseTTL: time.Millisecond},
		{LeaseTTL: -time.Second},
	}
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	ok := aggregator.Config{LeaseTTL: 10 * time.Second}
	if err := ok.Validate(); err != nil {
		t.Errorf("nats-leases 10s: %v", err)
	}
}
