package kafkabus_test

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
	"github.com/keymeter/keymeter/internal/testfix/kafkacluster"
)

// topicState is what the rate tests check of a topic: whether it exists,
// its partitions, the replicas of partition 0 and some of its configs.
func topicState(ctx context.Context, t *testing.T, brokers []string, topic string) (exists bool, partitions, replicas int, configs map[string]string) {
	t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: &kafka.Transport{}}
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tm := range md.Topics {
		if tm.Name == topic && tm.Error == nil {
			exists, partitions = true, len(tm.Partitions)
			if partitions > 0 {
				replicas = len(tm.Partitions[0].Replicas)
			}
		}
	}
	if !exists {
		return false, 0, 0, nil
	}
	res, err := c.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{"cleanup.policy", "retention.ms", "max.message.bytes"},
	}}})
	if err != nil || len(res.Resources) == 0 {
		t.Fatalf("describe %s: %v", topic, err)
	}
	configs = map[string]string{}
	for _, e := range res.Resources[0].ConfigEntries {
		configs[e.ConfigName] = e.ConfigValue
	}
	return exists, partitions, replicas, configs
}

// roundTrip subscribes, publishes one report and waits for it.
func roundTrip(ctx context.Context, t *testing.T, tr bus.RateTransport) {
	t.Helper()
	got := make(chan string, 4)
	stop, err := tr.SubscribeRates(ctx, func(r bus.RateReport) { got <- string(r.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := tr.PublishRates(ctx, bus.RateReport{Data: []byte("hello"), Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "hello" {
			t.Fatalf("report %q, want hello", s)
		}
	case <-ctx.Done():
		t.Fatal("report not received")
	}
}

// The rate-report topic is made on first use only, with one partition,
// deletion after a minute, and the configured replication.
func TestRateTopicCreatedOnUse(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 60*time.Second)
	b, cfg := newBus(t, nil)
	if exists, _, _, _ := topicState(ctx, t, cfg.Brokers, cfg.RateLimitsTopic); exists {
		t.Fatalf("topic %s exists before any rate report", cfg.RateLimitsTopic)
	}
	roundTrip(ctx, t, b.RateTransport())
	exists, parts, replicas, configs := topicState(ctx, t, cfg.Brokers, cfg.RateLimitsTopic)
	if !exists || parts != 1 || replicas != 1 || configs["cleanup.policy"] != "delete" || configs["retention.ms"] != "60000" ||
		configs["max.message.bytes"] != "1048576" {
		t.Fatalf("topic %s: exists %v, %d partitions, %d replicas, configs %v; want 1 partition, 1 replica, delete after 60000 ms, messages up to 1048576 bytes",
			cfg.RateLimitsTopic, exists, parts, replicas, configs)
	}
}

// Closing the bus ends its rate subscriptions: their readers stop (no
// goroutine is left behind), fn is not called again, and a subscription
// after Close fails. Not parallel: it counts goroutines.
func TestRateTransportClose(t *testing.T) {
	ctx := ctxT(t, 60*time.Second)
	b, cfg := newBus(t, nil)
	before := runtime.NumGoroutine()
	tr := b.RateTransport()
	var calls atomic.Int64
	stop, err := tr.SubscribeRates(ctx, func(bus.RateReport) { calls.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.PublishRates(ctx, bus.RateReport{Data: []byte("x"), Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for calls.Load() == 0 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for runtime.NumGoroutine() > before && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Errorf("%d goroutines after Close, %d before subscribing", g, before)
	}
	// A report published by another bus after Close reaches nobody here.
	other, _ := newBus(t, func(c *kafkabus.Config) { c.TopicPrefix = cfg.TopicPrefix })
	n := calls.Load()
	roundTrip(ctx, t, other.RateTransport())
	time.Sleep(500 * time.Millisecond)
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return after Close")
	}
	if _, err := tr.SubscribeRates(ctx, func(bus.RateReport) {}); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("SubscribeRates after Close: %v, want bus.ErrClosed", err)
	}
	if calls.Load() != n {
		t.Errorf("fn called %d times after Close", calls.Load()-n)
	}
}

// On a three-node cluster with --bus-replicas 3, the rate topic is made
// with three replicas and carries reports.
func TestRateTransportReplicated(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts a three-node Kafka cluster")
	}
	t.Parallel()
	c := kafkacluster.New(t)
	ctx := ctxT(t, 2*time.Minute)
	cfg := kafkabus.Config{Brokers: c.Brokers(), ReplicationFactor: 3, Partitions: 2}
	b, err := kafkabus.New(ctx, cfg, kafkabus.WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	roundTrip(ctx, t, b.RateTransport())
	topic := b.Config().RateLimitsTopic
	if exists, parts, replicas, _ := topicState(ctx, t, cfg.Brokers, topic); !exists || parts != 1 || replicas != 3 {
		t.Fatalf("topic %s: exists %v, %d partitions, %d replicas; want 1 partition, 3 replicas", topic, exists, parts, replicas)
	}
}
