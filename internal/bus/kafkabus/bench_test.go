package kafkabus_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
	"github.com/keymeter/keymeter/internal/event"
)

// BenchmarkEndToEnd publishes batches of 1000 events and consumes them all
// back through one consumer group member, as `keymeter bench bus` does:
//
//	go test -run '^$' -bench EndToEnd -benchtime 2000x ./internal/bus/kafkabus
func BenchmarkEndToEnd(b *testing.B) {
	const perBatch, keys = 1000, 64
	bb, cfg := newBus(b, func(c *kafkabus.Config) {
		c.Partitions = 8
		c.MaxPending = 512
		// KEYMETER_BENCH_COMPRESSION tries a codec: none, lz4, snappy, zstd, gzip.
		c.Compression = os.Getenv("KEYMETER_BENCH_COMPRESSION")
		if p, _ := strconv.Atoi(os.Getenv("KEYMETER_BENCH_PARTITIONS")); p > 0 {
			c.Partitions = p
		}
	})
	// One encoded batch per key; messages differ by batch id (the header).
	data := make([][]byte, keys)
	for k := range keys {
		eb := event.Batch{ID: "bench", Producer: "bench", Created: time.Now()}
		for i := range perBatch {
			eb.Events = append(eb.Events, event.Event{
				ID: fmt.Sprintf("v1-%d", i), Time: time.Now(), Project: "proj_bench",
				KeyID: fmt.Sprintf("key_%02d", k), Outcome: event.OutcomeValid, ClientIP: "203.0.113.7",
				Country: "DE", ASN: 3320, Method: "GET", Host: "api.example.com", Route: "/v1/items",
				Status: 200, LatencyUS: 1234, BytesIn: 120, BytesOut: 4096, UserAgent: "curl/8.5",
				VerifierID: "v1", CostUnits: 1,
			})
		}
		data[k] = event.AppendBatch(nil, &eb)
	}
	b.SetBytes(int64(len(data[0])))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := bb.NewConsumer(ctx, bus.ConsumerConfig{Group: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(context.Background())

	var (
		mu       sync.Mutex
		seen     = map[int]bool{}
		dups     atomic.Int64
		consumed atomic.Int64
		lastAt   atomic.Int64
	)
	cctx, ccancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		var decoded event.Batch
		for cctx.Err() == nil {
			ds, err := c.Fetch(cctx, 256, 100*time.Millisecond)
			if err != nil {
				return
			}
			last := map[int]bus.Delivery{}
			for _, d := range ds {
				// Decode as a consumer would: the figure is end to end.
				if err := event.DecodeBatch(d.Data, &decoded); err != nil || len(decoded.Events) != perBatch {
					b.Errorf("batch %s: %v (%d events)", d.BatchID, err, len(decoded.Events))
				}
				n, _ := strconv.Atoi(d.BatchID)
				mu.Lock()
				if seen[n] {
					dups.Add(1)
				}
				seen[n] = true
				mu.Unlock()
				last[d.Partition] = d
			}
			for _, d := range last {
				if err := c.Ack(cctx, d); err != nil && cctx.Err() == nil {
					b.Errorf("ack: %v", err)
				}
			}
			consumed.Add(int64(len(ds)))
			lastAt.Store(time.Now().UnixNano())
		}
	})

	p := bb.Publisher()
	start := time.Now()
	n := 0
	for b.Loop() {
		if _, err := p.Publish(ctx, bus.Message{
			Key: fmt.Sprintf("key_%02d", n%keys), BatchID: strconv.Itoa(n), Source: "bench", Data: data[n%keys],
		}); err != nil {
			b.Fatal(err)
		}
		n++
	}
	if err := p.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	pubElapsed := time.Since(start)
	deadline := time.Now().Add(60 * time.Second)
	for consumed.Load() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ccancel()
	wg.Wait()
	elapsed := time.Duration(lastAt.Load() - start.UnixNano())
	mu.Lock()
	lost := 0
	for i := range n {
		if !seen[i] {
			lost++
		}
	}
	mu.Unlock()
	events := float64(n * perBatch)
	b.ReportMetric(events/elapsed.Seconds(), "events/s")
	b.ReportMetric(events/pubElapsed.Seconds(), "pub_events/s")
	b.ReportMetric(float64(lost), "lost")
	b.ReportMetric(float64(dups.Load()), "duplicated")
	b.Logf("topic=%s batches=%d events=%d batch_bytes=%d publish=%v end_to_end=%v lost=%d duplicated=%d",
		cfg.EventsTopic, n, n*perBatch, len(data[0]), pubElapsed, elapsed, lost, dups.Load())
	if lost > 0 {
		b.Errorf("%d batches lost", lost)
	}
}

// BenchmarkKeySnapshot measures how long a verifier waits for the key table
// at start: keys (KEYMETER_BENCH_KEYS, default 100000) of 200 bytes each,
// written straight to the compacted topic, then one WatchKeys snapshot per
// iteration.
func BenchmarkKeySnapshot(b *testing.B) {
	n := 100_000
	if v, _ := strconv.Atoi(os.Getenv("KEYMETER_BENCH_KEYS")); v > 0 {
		n = v
	}
	bb, cfg := newBus(b, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w := &kafka.Writer{
		Addr: kafka.TCP(cfg.Brokers...), Topic: cfg.KeysTopic, Balancer: kafkabus.KeyBalancer{},
		BatchSize: 5000, BatchBytes: 4 << 20, BatchTimeout: 5 * time.Millisecond,
		RequiredAcks: kafka.RequireAll, Compression: kafka.Lz4, Transport: &kafka.Transport{},
	}
	value := make([]byte, 200)
	msgs := make([]kafka.Message, 0, 5000)
	for i := range n {
		msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprintf("key_%09d", i)), Value: value})
		if len(msgs) == cap(msgs) || i == n-1 {
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				b.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
	_ = w.Close()
	b.ResetTimer()
	for b.Loop() {
		wctx, wcancel := context.WithCancel(ctx)
		ch, err := bb.WatchKeys(wctx)
		if err != nil {
			b.Fatal(err)
		}
		got := 0
		for u := range ch {
			if u.EndOfSnapshot {
				break
			}
			got++
		}
		wcancel()
		for range ch {
		}
		if got != n {
			b.Fatalf("snapshot of %d keys, want %d", got, n)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "keys/s")
}
