package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/bench/proc"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

// BusConfig is `keymeter bench bus`: publish Events in batches of Batch
// and consume them all back.
type BusConfig struct {
	Bus     bus.Bus // opened with a fresh prefix, so an earlier run's events are not counted
	Backend string  // for the summary: nats, kafka
	Events  int
	Batch   int // events per bus message
	Output
}

// BusResult is what RunBus measured.
type BusResult struct {
	Events, Consumed, Duplicated int
	EventsPerSec                 float64
	P50MS, P99MS                 float64 // publish-to-consume latency of a batch
}

// RunBus publishes and consumes, and prints events/s, the latency
// percentiles, lost and duplicated.
func RunBus(ctx context.Context, cfg BusConfig) (BusResult, error) {
	total, per, b := cfg.Events, cfg.Batch, cfg.Bus
	r := BusResult{Events: total}
	if total <= 0 || per <= 0 {
		return r, fmt.Errorf("bench bus: events and batch must be positive (got %d, %d)", total, per)
	}
	nbatches := (total + per - 1) / per
	cfg.logf("bench bus: backend=%s events=%d batch=%d batches=%d partitions=%d", cfg.Backend, total, per, nbatches, b.Partitions())

	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "bench"})
	if err != nil {
		return r, err
	}
	defer cons.Close(context.Background())

	c := &busCounter{seen: make([]uint8, total), start: time.Now()}
	errc := make(chan error, 2)
	consumed := make(chan int, 1)
	go func() {
		got, err := c.consume(ctx, cons, cfg)
		if err != nil {
			errc <- err
			return
		}
		consumed <- got
	}()
	published := make(chan struct{})
	go func() {
		defer close(published)
		if err := publishBus(ctx, cfg, nbatches); err != nil {
			errc <- err
			return
		}
		cfg.logf("bench bus: published %d events in %s", total, time.Since(c.start).Round(time.Millisecond))
	}()

	select {
	case r.Consumed = <-consumed:
		<-published // every event arrived, so the publisher is done or about to be
	case err := <-errc:
		return r, err
	case <-ctx.Done():
		return r, errors.New("bench bus: interrupted")
	}
	el := time.Since(c.start)
	for _, s := range c.seen {
		if s > 1 {
			r.Duplicated += int(s) - 1
		}
	}
	c.mu.Lock()
	r.P50MS, r.P99MS = PercentileMS(c.lats, 0.50), PercentileMS(c.lats, 0.99)
	c.mu.Unlock()
	r.EventsPerSec = float64(r.Consumed) / el.Seconds()
	var s Summary
	s.Add("bench", "bus")
	s.Add("backend", cfg.Backend)
	s.Add("events", total)
	s.Add("batch", per)
	s.Add("events_per_s", int(r.EventsPerSec))
	s.Add("p50_ms", r.P50MS)
	s.Add("p99_ms", r.P99MS)
	s.Add("lost", total-r.Consumed)
	s.Add("duplicated", r.Duplicated)
	s.Add("rss_mb", proc.RSSMB())
	s.Print(cfg.out())
	return r, nil
}

// busCounter counts what the consumer of RunBus received: each event id
// (its BytesIn) once in seen, and the publish-to-consume latency of every
// batch.
type busCounter struct {
	seen  []uint8
	start time.Time
	mu    sync.Mutex
	lats  []time.Duration
}

// consume decodes every batch and counts each event id once, until all
// arrived (or 10 minutes passed); it returns how many distinct ones did.
func (c *busCounter) consume(ctx context.Context, cons bus.Consumer, cfg BusConfig) (int, error) {
	total := len(c.seen)
	var eb event.Batch
	got := 0
	p := Progress{Name: "bench bus", Every: time.Second, W: cfg.progress()}
	deadline := time.Now().Add(10 * time.Minute)
	for got < total && time.Now().Before(deadline) {
		ds, err := cons.Fetch(ctx, 256, 2*time.Second)
		if err != nil {
			return got, err
		}
		last := map[int]bus.Delivery{}
		now := time.Now()
		for _, d := range ds {
			if err := event.DecodeBatch(d.Data, &eb); err != nil {
				return got, fmt.Errorf("batch %s: %w", d.BatchID, err)
			}
			c.mu.Lock()
			c.lats = append(c.lats, now.Sub(eb.Created))
			c.mu.Unlock()
			for i := range eb.Events {
				idx := int(eb.Events[i].BytesIn)
				if idx < total {
					if c.seen[idx] == 0 {
						got++
					}
					if c.seen[idx] < 255 {
						c.seen[idx]++
					}
				}
			}
			last[d.Partition] = d
		}
		for _, d := range last {
			if err := cons.Ack(ctx, d); err != nil {
				return got, err
			}
		}
		p.Tick("consumed %d/%d events (%.0f events/s)", got, total, float64(got)/time.Since(c.start).Seconds())
	}
	return got, nil
}

// publishBus publishes the events in nbatches batches spread over 64 keys,
// so every partition is used; event i carries i in BytesIn.
func publishBus(ctx context.Context, cfg BusConfig, nbatches int) error {
	total, per := cfg.Events, cfg.Batch
	pub := cfg.Bus.Publisher()
	buf := event.Batch{Producer: "bench"}
	now := time.Now()
	tmpl := syntheticEvent
	var enc []byte
	for bi := range nbatches {
		key := fmt.Sprintf("key_bench_%02d", bi%64)
		buf.ID = fmt.Sprintf("bench-%d", bi)
		buf.Events = buf.Events[:0]
		for i := bi * per; i < min((bi+1)*per, total); i++ {
			e := tmpl
			e.ID = buf.ID
			e.KeyID = key
			e.Time = now
			e.BytesIn = uint64(i)
			buf.Events = append(buf.Events, e)
		}
		buf.Created = time.Now()
		enc = event.AppendBatch(make([]byte, 0, len(enc)), &buf)
		if _, err := pub.Publish(ctx, bus.Message{Key: key, BatchID: buf.ID, Source: "bench", Data: enc}); err != nil {
			return err
		}
	}
	return pub.Flush(ctx)
}

// syntheticEvent is the template of the events the bus benchmarks publish.
var syntheticEvent = event.Event{Project: "proj_bench", Outcome: event.OutcomeValid, ClientIP: "203.0.113.9", Country: "DE",
	ASN: 3320, Method: "GET", Host: "api.example.com", Route: "/v1/items", Status: 200, LatencyUS: 800,
	BytesOut: 2048, UserAgent: "bench/1", VerifierID: "bench", CostUnits: 1}
