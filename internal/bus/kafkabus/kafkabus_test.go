package kafkabus_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/bustest"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
)

func testLogger() *slog.Logger {
	// KEYMETER_TEST_LOG=debug|info shows more of the adapter's logging.
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(os.Getenv("KEYMETER_TEST_LOG"))); err != nil {
		lvl = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// newBus opens a bus on fresh topics, deleted when the test ends.
func newBus(t testing.TB, mut func(*kafkabus.Config)) (*kafkabus.Bus, kafkabus.Config) {
	t.Helper()
	cfg := kafkabus.Config{
		Brokers:     brokers(t),
		TopicPrefix: prefix(t),
		Partitions:  4,
	}
	if mut != nil {
		mut(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b, err := kafkabus.New(ctx, cfg, kafkabus.WithLogger(testLogger()))
	if err != nil {
		t.Fatalf("kafkabus.New: %v", err)
	}
	full := b.Config()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
		deleteTopics(ctx, full)
	})
	return b, full
}

func deleteTopics(ctx context.Context, cfg kafkabus.Config) {
	c := &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Transport: &kafka.Transport{}}
	_, _ = c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{
		Topics: []string{cfg.EventsTopic, cfg.KeysTopic, cfg.DecisionsTopic, cfg.DeadLetterTopic, cfg.RateLimitsTopic},
	})
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func publish(t testing.TB, p bus.Publisher, msgs ...bus.Message) {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	for _, m := range msgs {
		if _, err := p.Publish(ctx, m); err != nil {
			t.Fatalf("publish %s: %v", m.BatchID, err)
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// consume fetches until n deliveries arrived or the deadline passes.
func consume(t testing.TB, c bus.Consumer, n int, ack bool) []bus.Delivery {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	var got []bus.Delivery
	for len(got) < n {
		ds, err := c.Fetch(ctx, n-len(got), time.Second)
		if err != nil {
			t.Fatalf("fetch after %d of %d: %v", len(got), n, err)
		}
		got = append(got, ds...)
		if ack && len(ds) > 0 {
			for _, d := range ds {
				if err := c.Ack(ctx, d); err != nil {
					t.Fatalf("ack %d/%d: %v", d.Partition, d.Position, err)
				}
			}
		}
	}
	return got
}

// TestConformance runs the shared bus suite against a real broker. Its
// restart case kills the broker (SIGKILL) and starts it again on the same
// storage through deploy/kafka/kafka.sh; that broker is this test's own
// (see privateBroker), so the kill disturbs nobody else.
func TestConformance(t *testing.T) {
	t.Parallel()
	pb := startPrivateBroker(t)
	addrs := []string{pb.Addr}
	stop := pb.Kill
	start := pb.Start
	bustest.Run(t, bustest.Harness{
		Name: "kafka",
		New: func(t *testing.T, o bustest.Options) bus.Bus {
			cfg := kafkabus.Config{
				Brokers:     addrs,
				TopicPrefix: prefix(t),
				Partitions:  o.Partitions,
				MaxPending:  o.MaxPending,
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			b, err := kafkabus.New(ctx, cfg, kafkabus.WithLogger(testLogger()))
			if err != nil {
				t.Fatalf("kafkabus.New: %v", err)
			}
			full := b.Config()
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				deleteTopics(ctx, full)
			})
			return b
		},
		PublishRaw: func(ctx context.Context, b bus.Bus, key string, data []byte) error {
			cfg := b.(*kafkabus.Bus).Config()
			w := &kafka.Writer{
				Addr: kafka.TCP(cfg.Brokers...), Topic: cfg.EventsTopic,
				Balancer:     kafkabus.KeyBalancer{},
				BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll,
				Transport: &kafka.Transport{},
			}
			defer w.Close()
			return w.WriteMessages(ctx, kafka.Message{Key: []byte(key), Value: data})
		},
		Stop:    stop,
		Start:   start,
		Restart: func(t *testing.T) { stop(t); start(t) },
	})
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	ok := kafkabus.Config{Brokers: []string{"127.0.0.1:19092"}}
	tests := []struct {
		name string
		mut  func(*kafkabus.Config)
		want string // substring of the error; "" for valid
	}{
		{"defaults", func(*kafkabus.Config) {}, ""},
		{"no brokers", func(c *kafkabus.Config) { c.Brokers = nil }, "Brokers"},
		{"bad broker", func(c *kafkabus.Config) { c.Brokers = []string{"localhost"} }, "Brokers[0]"},
		{"bad topic", func(c *kafkabus.Config) { c.EventsTopic = "a b" }, "EventsTopic"},
		{"same topics", func(c *kafkabus.Config) { c.KeysTopic = "x"; c.DecisionsTopic = "x" }, "also KeysTopic"},
		{"partitions", func(c *kafkabus.Config) { c.Partitions = -1 }, "Partitions"},
		{"compression", func(c *kafkabus.Config) { c.Compression = "brotli" }, "want one of lz4, none, gzip"},
		{"batch timeout", func(c *kafkabus.Config) { c.BatchTimeout = time.Minute }, "BatchTimeout"},
		{"max pending", func(c *kafkabus.Config) { c.MaxPending = -3 }, "MaxPending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mut(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate = %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

func TestRedeliveryAfterConsumerCloses(t *testing.T) {
	t.Parallel()
	b, cfg := newBus(t, func(c *kafkabus.Config) { c.Partitions = 1 })
	var msgs []bus.Message
	for i := range 20 {
		msgs = append(msgs, bus.Message{Key: "k", BatchID: fmt.Sprintf("b%02d", i), Data: []byte{byte(i)}})
	}
	publish(t, b.Publisher(), msgs...)
	group := cfg.TopicPrefix + "g"
	c1, err := b.NewConsumer(ctxT(t, 10*time.Second), bus.ConsumerConfig{Group: group})
	if err != nil {
		t.Fatal(err)
	}
	got := consume(t, c1, 20, false)
	// Ack the 8th: it and everything before it are done.
	if err := c1.Ack(ctxT(t, 10*time.Second), got[7]); err != nil {
		t.Fatal(err)
	}
	if err := c1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Fetch(context.Background(), 1, 0); !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("fetch after close: %v, want ErrClosed", err)
	}
	c2, err := b.NewConsumer(ctxT(t, 10*time.Second), bus.ConsumerConfig{Group: group})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(context.Background())
	again := consume(t, c2, 12, true)
	if again[0].BatchID != "b08" || again[11].BatchID != "b19" {
		t.Fatalf("redelivered %s..%s, want b08..b19", again[0].BatchID, again[11].BatchID)
	}
	if again[0].Position != got[8].Position {
		t.Fatalf("redelivered position %d, want %d", again[0].Position, got[8].Position)
	}
}

func TestKeySnapshotThenUpdates(t *testing.T) {
	t.Parallel()
	b, _ := newBus(t, func(c *kafkabus.Config) { c.KeyPartitions = 3 })
	ctx := ctxT(t, 60*time.Second)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		must(b.PutKey(ctx, fmt.Sprintf("key_%02d", i), []byte("v1")))
	}
	must(b.PutKey(ctx, "key_03", []byte("v2")))
	must(b.DeleteKey(ctx, "key_05"))
	must(b.PutKey(ctx, "key_empty", []byte{}))

	wctx, cancel := context.WithCancel(ctx)
	ch, err := b.WatchKeys(wctx)
	must(err)
	snap := map[string]string{}
	for u := range ch {
		if u.EndOfSnapshot {
			break
		}
		if u.Deleted {
			t.Fatalf("snapshot holds a deletion of %s", u.ID)
		}
		snap[u.ID] = string(u.Value)
	}
	if len(snap) != 20 || snap["key_03"] != "v2" || snap["key_00"] != "v1" || snap["key_empty"] != "" {
		t.Fatalf("snapshot %v", snap)
	}
	if _, ok := snap["key_05"]; ok {
		t.Fatal("deleted key_05 in snapshot")
	}
	must(b.PutKey(ctx, "key_new", []byte("n1")))
	must(b.DeleteKey(ctx, "key_00"))
	must(b.PutKey(ctx, "key_03", []byte("v3")))
	want := []string{"key_new=n1", "key_00 deleted", "key_03=v3"}
	var live []string
	for len(live) < len(want) {
		select {
		case u := <-ch:
			if u.Deleted {
				live = append(live, u.ID+" deleted")
			} else {
				live = append(live, u.ID+"="+string(u.Value))
			}
			if u.Revision == 0 {
				t.Fatalf("update %s without revision", u.ID)
			}
		case <-ctx.Done():
			t.Fatalf("live updates: got %v, want %v", live, want)
		}
	}
	// Different keys may sit on different partitions: order across keys is
	// not promised, only the latest value per key.
	slices.Sort(live)
	slices.Sort(want)
	if !slices.Equal(live, want) {
		t.Fatalf("live updates %v, want %v", live, want)
	}
	cancel()
	for range ch {
	}
}

func TestInvalidMessageDeadLettered(t *testing.T) {
	t.Parallel()
	b, cfg := newBus(t, func(c *kafkabus.Config) { c.Partitions = 1 })
	// A foreign producer writes a message without CloudEvents headers.
	w := &kafka.Writer{Addr: kafka.TCP(cfg.Brokers...), Topic: cfg.EventsTopic, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll, Transport: &kafka.Transport{}}
	if err := w.WriteMessages(ctxT(t, 20*time.Second), kafka.Message{Value: []byte("garbage")}); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	publish(t, b.Publisher(), bus.Message{Key: "k", BatchID: "good", Data: []byte("ok")})

	c, err := b.NewConsumer(ctxT(t, 10*time.Second), bus.ConsumerConfig{Group: cfg.TopicPrefix + "g"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	got := consume(t, c, 2, false)
	bad, good := got[0], got[1]
	if bad.Invalid == "" || !strings.Contains(bad.Invalid, bus.HeaderBatchID) {
		t.Fatalf("first delivery Invalid=%q, want a reason naming %s", bad.Invalid, bus.HeaderBatchID)
	}
	if good.Invalid != "" || good.BatchID != "good" {
		t.Fatalf("second delivery %+v", good)
	}
	ctx := ctxT(t, 30*time.Second)
	origin := fmt.Sprintf("%s/%d/%d", cfg.EventsTopic, bad.Partition, bad.Position)
	if err := b.DeadLetter(ctx, bus.DeadLetter{Origin: origin, Reason: bad.Invalid, Data: bad.Data}); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, good); err != nil {
		t.Fatal(err)
	}
	dls, err := b.ReadDeadLetters(ctx, 10, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || dls[0].Origin != origin || dls[0].Reason != bad.Invalid || string(dls[0].Data) != "garbage" || dls[0].Time.IsZero() {
		t.Fatalf("dead letters %+v", dls)
	}
}

func TestReadDeadLettersEmptyWaits(t *testing.T) {
	t.Parallel()
	b, _ := newBus(t, nil)
	start := time.Now()
	// It returns after the wait asked for, not at the end of its context:
	// a context and a bound far apart tell the two apart on a loaded
	// machine, where the broker's first answers can take seconds.
	dls, err := b.ReadDeadLetters(ctxT(t, 2*time.Minute), 10, 300*time.Millisecond)
	if err != nil || len(dls) != 0 {
		t.Fatalf("ReadDeadLetters = %v, %v", dls, err)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("waited %v for an empty log, asked for 300ms", time.Since(start))
	}
}

func TestBackpressureBound(t *testing.T) {
	t.Parallel()
	// A long batch timeout keeps batches unacknowledged long enough to
	// fill the bound deterministically.
	b, _ := newBus(t, func(c *kafkabus.Config) { c.MaxPending = 2; c.BatchTimeout = 2 * time.Second; c.Partitions = 1 })
	p := b.Publisher()
	ctx := ctxT(t, 30*time.Second)
	var acks []bus.PubAck
	for i := range 2 {
		a, err := p.Publish(ctx, bus.Message{Key: "k", BatchID: fmt.Sprint(i), Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, a)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err := p.Publish(short, bus.Message{Key: "k", BatchID: "over", Data: []byte("x")})
	if !errors.Is(err, bus.ErrBackpressure) {
		t.Fatalf("third publish: %v, want ErrBackpressure", err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range acks {
		select {
		case <-a.Done():
		default:
			t.Fatal("ack not done after Flush")
		}
		if a.Err() != nil {
			t.Fatal(a.Err())
		}
	}
	// Room again.
	if _, err := p.Publish(ctx, bus.Message{Key: "k", BatchID: "after", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
}

func TestReadRange(t *testing.T) {
	t.Parallel()
	b, cfg := newBus(t, func(c *kafkabus.Config) { c.Partitions = 2 })
	var msgs []bus.Message
	for i := range 10 {
		msgs = append(msgs, bus.Message{Key: "key_r", BatchID: fmt.Sprint(i), Data: []byte{byte(i)}})
	}
	publish(t, b.Publisher(), msgs...)
	part := bus.Partition("key_r", cfg.Partitions)
	ctx := ctxT(t, 30*time.Second)
	var ids []string
	err := b.ReadRange(ctx, part, 3, 6, func(d bus.Delivery) error {
		ids = append(ids, d.BatchID)
		if d.Partition != part {
			return fmt.Errorf("partition %d", d.Partition)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []string{"3", "4", "5", "6"}) {
		t.Fatalf("range 3..6 read %v", ids)
	}
	if err := b.ReadRange(ctx, part, 8, 10, func(bus.Delivery) error { return nil }); err == nil {
		t.Fatal("range past the end: no error")
	}
}

func TestTopicsIdempotentAndChecked(t *testing.T) {
	t.Parallel()
	b, cfg := newBus(t, nil)
	ctx := ctxT(t, 60*time.Second)
	if err := b.PutKey(ctx, "key_1", []byte("v")); err != nil {
		t.Fatal(err)
	}
	// Same config again: the topics exist, nothing is lost.
	again, err := kafkabus.New(ctx, cfg, kafkabus.WithLogger(testLogger()))
	if err != nil {
		t.Fatalf("second New on existing topics: %v", err)
	}
	defer again.Close(ctx)
	ch, err := again.WatchKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u := <-ch; u.ID != "key_1" || string(u.Value) != "v" {
		t.Fatalf("first update %+v, want key_1=v", u)
	}
	// Another partition count would move keys: refused, naming both.
	other := cfg
	other.Partitions = cfg.Partitions + 1
	if _, err := kafkabus.New(ctx, other); err == nil || !strings.Contains(err.Error(), "exists with 4 partitions, config asks for 5") {
		t.Fatalf("New with other partitions: %v", err)
	}

	// A key topic made elsewhere without compaction is reported.
	pre := kafkabus.Config{Brokers: cfg.Brokers, TopicPrefix: prefix(t)}
	c := &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Transport: &kafka.Transport{}}
	if _, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: pre.TopicPrefix + "keys", NumPartitions: 1, ReplicationFactor: 1,
	}}}); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil))
	nb, err := kafkabus.New(ctx, pre, kafkabus.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	full := nb.Config()
	t.Cleanup(func() { deleteTopics(context.Background(), full) })
	_ = nb.Close(ctx)
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "not compacted") {
		t.Fatalf("no warning about the uncompacted key topic; logs:\n%s", logs.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Two members of one group split the partitions; every batch reaches one
// of them (at least once: a rebalance may hand a batch to both).
func TestGroupMembersSharePartitions(t *testing.T) {
	t.Parallel()
	b, _ := newBus(t, nil)
	ctx := ctxT(t, 90*time.Second)
	group := bus.ConsumerConfig{Group: "shared"}
	c1, err := b.NewConsumer(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close(context.Background())
	c2, err := b.NewConsumer(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(context.Background())
	const n = 200
	var msgs []bus.Message
	for i := range n {
		msgs = append(msgs, bus.Message{Key: fmt.Sprintf("key_%d", i%16), BatchID: fmt.Sprint(i), Data: []byte("x")})
	}
	publish(t, b.Publisher(), msgs...)

	var mu sync.Mutex
	seen := map[string]bool{}
	parts := [2]map[int]bool{{}, {}}
	var wg sync.WaitGroup
	for i, c := range []bus.Consumer{c1, c2} {
		wg.Go(func() {
			for ctx.Err() == nil {
				mu.Lock()
				done := len(seen) == n
				mu.Unlock()
				if done {
					return
				}
				ds, err := c.Fetch(ctx, 50, 200*time.Millisecond)
				if err != nil {
					return
				}
				mu.Lock()
				for _, d := range ds {
					seen[d.BatchID] = true
					parts[i][d.Partition] = true
				}
				mu.Unlock()
				for _, d := range ds {
					_ = c.Ack(ctx, d)
				}
			}
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("consumed %d of %d batches", len(seen), n)
	}
	// Which member got what depends on when the second join landed.
	t.Logf("partitions per member: %v / %v", parts[0], parts[1])
}

func TestNewFailsWithReasonWhenNoBroker(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err = kafkabus.New(ctx, kafkabus.Config{Brokers: []string{addr}}, kafkabus.WithLogger(testLogger()))
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("New on a closed port: %v, want the connection error", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("New took %v with a 2s context", el)
	}
}
