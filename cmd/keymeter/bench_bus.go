package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

func init() { registerBench(newBenchBusCmd) }

func newBenchBusCmd(g *globals) *cobra.Command {
	var (
		bf      busFlags
		events  int
		batch   int
		dataDir string
		keep    bool
	)
	c := &cobra.Command{
		Use:   "bus",
		Short: "Publish N events in batches and consume them all back: events/s, publish-to-consume p99, lost, duplicated",
		Example: `  keymeter bench bus --bus nats --events 2000000 --batch 1000
  keymeter bench bus --bus kafka --kafka-brokers 127.0.0.1:19092 --events 2000000`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if events <= 0 || batch <= 0 {
				return fmt.Errorf("--events and --batch must be positive (got %d, %d)", events, batch)
			}
			if dataDir == "" {
				d, err := os.MkdirTemp("", "keymeter-bench-bus-")
				if err != nil {
					return err
				}
				dataDir = d
				if !keep {
					defer os.RemoveAll(d)
				}
			}
			// A fresh prefix so an earlier run's events are not counted.
			bf.Prefix = fmt.Sprintf("bench%d", time.Now().UnixNano()%1_000_000_000)
			return runBenchBus(cmd.Context(), g, &bf, dataDir, events, batch)
		},
	}
	bf.add(c.Flags())
	c.Flags().IntVar(&events, "events", 2_000_000, "events to publish")
	c.Flags().IntVar(&batch, "batch", 1000, "events per bus message")
	c.Flags().StringVar(&dataDir, "data-dir", "", "where the embedded server keeps its store (default: a temporary directory)")
	c.Flags().BoolVar(&keep, "keep", false, "keep the temporary data directory")
	return c
}

func runBenchBus(ctx context.Context, g *globals, bf *busFlags, dataDir string, total, per int) error {
	log := g.Logger()
	b, err := bf.open(ctx, dataDir, log)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Close(cctx)
	}()
	nbatches := (total + per - 1) / per
	fmt.Fprintf(os.Stderr, "bench bus: backend=%s events=%d batch=%d batches=%d partitions=%d\n", bf.Backend, total, per, nbatches, b.Partitions())

	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "bench"})
	if err != nil {
		return err
	}
	defer cons.Close()

	seen := make([]uint8, total)
	var (
		latMu sync.Mutex
		lats  []time.Duration
	)
	start := time.Now()
	errc := make(chan error, 2)
	consumed := make(chan int, 1)

	// Consumer: decode every batch, count each event id once.
	go func() {
		var eb event.Batch
		got := 0
		p := progress{name: "bench bus", every: time.Second}
		deadline := time.Now().Add(10 * time.Minute)
		for got < total && time.Now().Before(deadline) {
			ds, err := cons.Fetch(ctx, 256, 2*time.Second)
			if err != nil {
				errc <- err
				return
			}
			last := map[int]bus.Delivery{}
			now := time.Now()
			for _, d := range ds {
				if err := event.DecodeBatch(d.Data, &eb); err != nil {
					errc <- fmt.Errorf("batch %s: %w", d.BatchID, err)
					return
				}
				latMu.Lock()
				lats = append(lats, now.Sub(eb.Created))
				latMu.Unlock()
				for i := range eb.Events {
					idx := int(eb.Events[i].BytesIn)
					if idx < total {
						if seen[idx] == 0 {
							got++
						}
						if seen[idx] < 255 {
							seen[idx]++
						}
					}
				}
				last[d.Partition] = d
			}
			for _, d := range last {
				if err := cons.Ack(ctx, d); err != nil {
					errc <- err
					return
				}
			}
			p.tick(ctx, "consumed %d/%d events (%.0f events/s)", got, total, float64(got)/time.Since(start).Seconds())
		}
		consumed <- got
	}()

	// Producer: batches spread over 64 keys, so every partition is used.
	go func() {
		pub := b.Publisher()
		buf := event.Batch{Producer: "bench"}
		now := time.Now()
		tmpl := event.Event{Project: "proj_bench", Outcome: event.OutcomeValid, ClientIP: "203.0.113.9", Country: "DE",
			ASN: 3320, Method: "GET", Host: "api.example.com", Route: "/v1/items", Status: 200, LatencyUS: 800,
			BytesOut: 2048, UserAgent: "bench/1", VerifierID: "bench", CostUnits: 1}
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
				errc <- err
				return
			}
		}
		if err := pub.Flush(ctx); err != nil {
			errc <- err
			return
		}
		fmt.Fprintf(os.Stderr, "bench bus: published %d events in %s\n", total, time.Since(start).Round(time.Millisecond))
	}()

	var got int
	select {
	case got = <-consumed:
	case err := <-errc:
		return err
	case <-ctx.Done():
		return errors.New("interrupted")
	}
	el := time.Since(start)
	dup := 0
	for _, s := range seen {
		if s > 1 {
			dup += int(s) - 1
		}
	}
	latMu.Lock()
	p50, p99 := percentileMS(lats, 0.50), percentileMS(lats, 0.99)
	latMu.Unlock()
	var s summary
	s.add("bench", "bus")
	s.add("backend", bf.Backend)
	s.add("events", total)
	s.add("batch", per)
	s.add("events_per_s", int(float64(got)/el.Seconds()))
	s.add("p50_ms", p50)
	s.add("p99_ms", p99)
	s.add("lost", total-got)
	s.add("duplicated", dup)
	s.add("rss_mb", rssMB())
	s.print()
	return nil
}
