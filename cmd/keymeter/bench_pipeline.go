package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

func init() { registerBench(newBenchPipelineCmd) }

func newBenchPipelineCmd(g *globals) *cobra.Command {
	var (
		bf        busFlags
		events    int
		batch     int
		keys      int
		dataDir   string
		blockSize int
	)
	c := &cobra.Command{
		Use:   "pipeline",
		Short: "Events from publish to rows committed in the store, through the aggregator: events/s, lost, duplicated",
		Example: `  keymeter bench pipeline --bus nats --store chdb --events 2000000
  keymeter bench pipeline --bus kafka --kafka-brokers 127.0.0.1:19092 --events 2000000`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := g.Logger()
			if dataDir == "" {
				d, err := os.MkdirTemp("", "keymeter-bench-pipeline-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(d)
				dataDir = d
			}
			bf.Prefix = fmt.Sprintf("benchp%d", time.Now().UnixNano()%1_000_000_000)
			b, err := bf.open(ctx, dataDir, log)
			if err != nil {
				return err
			}
			defer b.Close(context.Background())
			st, err := chdb.Open(chdb.Config{DataDir: filepath.Join(dataDir, "clickhouse"), Database: bf.Prefix})
			if err != nil {
				return err
			}
			defer st.Close()
			if _, err := st.Migrate(ctx); err != nil {
				return err
			}
			agg, err := aggregator.New(aggregator.Config{Group: "bench", MaxBlockEvents: blockSize, FlushInterval: time.Second}, b, st, aggregator.WithLogger(log))
			if err != nil {
				return err
			}
			actx, stop := context.WithCancel(ctx)
			defer stop()
			aggDone := make(chan error, 1)
			go func() { aggDone <- agg.Run(actx) }()

			fmt.Fprintf(os.Stderr, "bench pipeline: bus=%s store=chdb events=%d batch=%d keys=%d\n", bf.Backend, events, batch, keys)
			start := time.Now()
			pubErr := make(chan error, 1)
			go func() { pubErr <- publishSynthetic(ctx, b.Publisher(), events, batch, keys) }()
			p := progress{name: "bench pipeline", every: time.Second}
			deadline := time.Now().Add(15 * time.Minute)
			for agg.Stats().Events < uint64(events) && time.Now().Before(deadline) {
				select {
				case err := <-pubErr:
					if err != nil {
						return err
					}
				case err := <-aggDone:
					return fmt.Errorf("aggregator stopped: %v", err)
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(50 * time.Millisecond):
				}
				s := agg.Stats().Events
				p.tick(ctx, "stored %d/%d events (%.0f events/s, rss %.0f MB)", s, events, float64(s)/time.Since(start).Seconds(), rssMB())
			}
			el := time.Since(start)
			stop()
			<-aggDone
			n, err := st.Count(ctx, "requests")
			if err != nil {
				return err
			}
			rows, err := st.Conn().Query(ctx, "SELECT toUInt64(uniqExact(event_id)) FROM "+st.Database()+".requests", nil)
			if err != nil {
				return err
			}
			var distinct uint64
			for rows.Next() {
				_ = rows.Scan(&distinct)
			}
			rows.Close()
			var s summary
			s.add("bench", "pipeline")
			s.add("bus", bf.Backend)
			s.add("store", "chdb")
			s.add("events", events)
			s.add("events_per_s", int(float64(distinct)/el.Seconds()))
			s.add("lost", int64(events)-int64(distinct))
			s.add("duplicated", int64(n)-int64(distinct))
			s.add("rss_mb", rssMB())
			s.print()
			return nil
		},
	}
	bf.add(c.Flags())
	c.Flags().String("store", "chdb", "store backend (chdb)")
	c.Flags().IntVar(&events, "events", 2_000_000, "events to publish")
	c.Flags().IntVar(&batch, "batch", 1000, "events per bus message")
	c.Flags().IntVar(&keys, "keys", 1000, "distinct keys")
	c.Flags().IntVar(&blockSize, "max-block-events", 100_000, "aggregator block size")
	c.Flags().StringVar(&dataDir, "data-dir", "", "where state lives (default: a temporary directory)")
	return c
}

// publishSynthetic publishes n events in batches; event ids are unique.
func publishSynthetic(ctx context.Context, pub bus.Publisher, n, per, keys int) error {
	now := time.Now().UTC()
	tmpl := event.Event{Project: "proj_bench", Outcome: event.OutcomeValid, ClientIP: "203.0.113.9", Country: "DE",
		ASN: 3320, Method: "GET", Host: "api.example.com", Route: "/v1/items", Status: 200, LatencyUS: 800,
		BytesOut: 2048, UserAgent: "bench/1", VerifierID: "bench", CostUnits: 1}
	eb := event.Batch{Producer: "bench"}
	ids := make([]string, per)
	for bi := 0; bi*per < n; bi++ {
		key := fmt.Sprintf("key_bench_%05d", bi%keys)
		eb.ID = fmt.Sprintf("bench-%d", bi)
		eb.Events = eb.Events[:0]
		for i := bi * per; i < min((bi+1)*per, n); i++ {
			e := tmpl
			ids[i-bi*per] = fmt.Sprintf("e%d", i)
			e.ID, e.KeyID, e.Time = ids[i-bi*per], key, now.Add(time.Duration(i)*time.Microsecond)
			eb.Events = append(eb.Events, e)
		}
		eb.Created = time.Now()
		if _, err := pub.Publish(ctx, bus.Message{Key: key, BatchID: eb.ID, Source: "bench", Data: event.AppendBatch(nil, &eb)}); err != nil {
			return err
		}
	}
	return pub.Flush(ctx)
}
