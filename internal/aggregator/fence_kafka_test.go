package aggregator_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

func kafkaBrokers(t *testing.T) []string {
	t.Helper()
	if env := os.Getenv("KEYMETER_KAFKA_BROKERS"); env != "" {
		return strings.Split(env, ",")
	}
	out, err := exec.Command("../../deploy/kafka/kafka.sh", "start").CombinedOutput()
	if err != nil {
		t.Fatalf("no Kafka broker (set KEYMETER_KAFKA_BROKERS or make deploy/kafka/kafka.sh start work): %v\n%s", err, out)
	}
	return []string{"127.0.0.1:19092"}
}

// slowStore is the real store whose inserts take a while, as under load:
// a member's flush is then often under way while its partitions move.
type slowStore struct {
	*store.DB
	delay time.Duration
}

func (s slowStore) InsertEvents(ctx context.Context, token string, events []event.Event) error {
	time.Sleep(s.delay)
	return s.DB.InsertEvents(ctx, token, events)
}

// member is one live aggregator of the group, with its own Kafka client
// and group membership.
type member struct {
	name   string
	cancel context.CancelFunc
	done   chan error
	bus    *kafkabus.Bus
	agg    *aggregator.Aggregator
}

// TestKafkaMembersExactlyOnce: aggregators of one Kafka consumer group
// share one store while members are killed (no graceful flush: the run
// context ends with no shutdown grace, the client closes) and added under
// traffic; every rebalance moves partitions between live members. Per-key
// counts are exact and no event id is stored twice. Events:
// KEYMETER_TEST_FENCE_EVENTS (default 200,000; the report's run used
// 1,000,000).
func TestKafkaMembersExactlyOnce(t *testing.T) {
	total := 200_000
	if v := os.Getenv("KEYMETER_TEST_FENCE_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			t.Fatalf("KEYMETER_TEST_FENCE_EVENTS=%q: want an integer >= 1000", v)
		}
		total = n
	}
	brokers := kafkaBrokers(t)
	prefix := fmt.Sprintf("fence%d.", time.Now().UnixNano()%1_000_000_000)
	newKafka := func() *kafkabus.Bus {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		b, err := kafkabus.New(ctx, kafkabus.Config{Brokers: brokers, TopicPrefix: prefix, Partitions: 8, SessionTimeout: 6 * time.Second},
			kafkabus.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	prod := newKafka()
	defer func() { _ = prod.Close(context.Background()) }()
	db := newStore(t)

	var mu sync.Mutex
	var members []*member
	start := func(name string) *member {
		b := newKafka()
		a, err := aggregator.New(aggregator.Config{Group: "g", FlushInterval: 200 * time.Millisecond, MaxBlockEvents: 20_000,
			RetryBackoff: 20 * time.Millisecond, ShutdownGrace: time.Nanosecond}, b, slowStore{db, 300 * time.Millisecond},
			aggregator.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		m := &member{name: name, cancel: cancel, done: make(chan error, 1), bus: b, agg: a}
		go func() { m.done <- a.Run(ctx) }()
		mu.Lock()
		members = append(members, m)
		mu.Unlock()
		return m
	}
	// kill ends a member without a graceful flush and closes its client.
	kill := func(m *member) {
		m.cancel()
		if err := <-m.done; err != nil {
			t.Errorf("member %s: %v", m.name, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.bus.Close(ctx)
	}
	m0, m1, m2 := start("m0"), start("m1"), start("m2")

	// Traffic: batches of 250 events over 50 keys, paced so that the
	// membership changes happen while it flows.
	const per, keys = 250, 50
	counts := map[string]int{}
	now := time.Now().UTC().Truncate(time.Second)
	pubCtx, pubCancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer pubCancel()
	pub := prod.Publisher()
	step := func(from, to int) {
		for i := from; i < to; i += per {
			key := fmt.Sprintf("key_%d", (i/per)%keys)
			eb := event.Batch{ID: fmt.Sprintf("fb-%d", i), Producer: "test", Created: time.Now()}
			for j := i; j < min(i+per, to); j++ {
				eb.Events = append(eb.Events, event.Event{ID: fmt.Sprintf("fe-%d", j), Time: now.Add(time.Duration(j) * time.Microsecond),
					Project: "proj_a", KeyID: key, Outcome: event.OutcomeValid, ClientIP: "198.51.100.1", Status: 200, Route: "/r", CostUnits: 1})
				counts[key]++
			}
			if _, err := pub.Publish(pubCtx, bus.Message{Key: key, BatchID: eb.ID, Source: "test", Data: event.AppendBatch(nil, &eb)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := pub.Flush(pubCtx); err != nil {
			t.Fatal(err)
		}
	}
	q := total / 4
	q -= q % per
	step(0, q)
	time.Sleep(time.Second)
	kill(m0)
	m3 := start("m3")
	step(q, 2*q)
	time.Sleep(500 * time.Millisecond)
	m4 := start("m4") // added while m1 and m2 are mid-flush
	kill(m1)
	step(2*q, 3*q)
	kill(m2)
	m5 := start("m5")
	step(3*q, total)

	// Wait for the store to hold everything, then a little longer for any
	// late (fenced or duplicate) insert to show.
	want := uint64(total)
	deadline := time.Now().Add(90 * time.Second)
	var got uint64
	for time.Now().Before(deadline) {
		var err error
		if got, err = db.Count(context.Background(), "requests"); err != nil {
			t.Fatal(err)
		}
		if got >= want {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second)
	for _, m := range []*member{m3, m4, m5} {
		m.cancel()
		if err := <-m.done; err != nil {
			t.Errorf("member %s: %v", m.name, err)
		}
		_ = m.bus.Close(context.Background())
	}
	var rebal, fenced, replayed uint64
	for _, m := range members {
		st := m.agg.Stats()
		rebal += st.Rebalances
		fenced += st.Fenced
		replayed += st.Replayed
	}
	t.Logf("events=%d stored=%d members=%d generations entered=%d flushes fenced=%d intents replayed=%d", total, got, len(members), rebal, fenced, replayed)

	checkExactlyOnce(t, db, counts, int(want))
	if rebal < 6 {
		t.Errorf("only %d generations entered: the membership changes did not rebalance", rebal)
	}
}
