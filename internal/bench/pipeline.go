package bench

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/bench/proc"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// PipelineConfig is `keymeter bench pipeline`: events from publish to rows
// committed in the store, through an aggregator.
type PipelineConfig struct {
	Bus       bus.Bus
	Backend   string    // for the summary
	Store     *store.DB // migrated, in a fresh database
	StoreName string    // for the summary: chdb, clickhouse
	Events    int
	Batch     int // events per bus message
	Keys      int
	BlockSize int // aggregator MaxBlockEvents
	Logger    *slog.Logger
	Output
}

// PipelineResult is what RunPipeline measured.
type PipelineResult struct {
	Events       int
	Stored       uint64 // rows
	Distinct     uint64 // distinct event ids among them
	EventsPerSec float64
}

// RunPipeline publishes the events, runs an aggregator until it has
// stored them all (or 15 minutes passed), and prints events/s, lost and
// duplicated.
func RunPipeline(ctx context.Context, cfg PipelineConfig) (PipelineResult, error) {
	r := PipelineResult{Events: cfg.Events}
	if cfg.Events <= 0 || cfg.Batch <= 0 || cfg.Keys <= 0 {
		return r, fmt.Errorf("bench pipeline: events, batch and keys must be positive")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	st := cfg.Store
	agg, err := aggregator.New(aggregator.Config{Group: "bench", MaxBlockEvents: cfg.BlockSize, FlushInterval: time.Second}, cfg.Bus, st, aggregator.WithLogger(cfg.Logger))
	if err != nil {
		return r, err
	}
	actx, stop := context.WithCancel(ctx)
	defer stop()
	aggDone := make(chan error, 1)
	go func() { aggDone <- agg.Run(actx) }()

	cfg.logf("bench pipeline: bus=%s store=%s events=%d batch=%d keys=%d", cfg.Backend, cfg.StoreName, cfg.Events, cfg.Batch, cfg.Keys)
	start := time.Now()
	pubErr := make(chan error, 1)
	go func() { pubErr <- PublishSynthetic(ctx, cfg.Bus.Publisher(), cfg.Events, cfg.Batch, cfg.Keys) }()
	p := Progress{Name: "bench pipeline", Every: time.Second, W: cfg.progress()}
	deadline := time.Now().Add(15 * time.Minute)
	for agg.Stats().Events < uint64(cfg.Events) && time.Now().Before(deadline) {
		select {
		case err := <-pubErr:
			if err != nil {
				return r, err
			}
		case err := <-aggDone:
			return r, fmt.Errorf("aggregator stopped: %v", err)
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		s := agg.Stats().Events
		p.Tick("stored %d/%d events (%.0f events/s, rss %.0f MB)", s, cfg.Events, float64(s)/time.Since(start).Seconds(), proc.RSSMB())
	}
	el := time.Since(start)
	stop()
	<-aggDone
	if r.Stored, err = st.Count(ctx, "requests"); err != nil {
		return r, err
	}
	rows, err := st.Conn().Query(ctx, "SELECT toUInt64(uniqExact(event_id)) FROM `"+st.Database()+"`.requests", nil)
	if err != nil {
		return r, err
	}
	for rows.Next() {
		_ = rows.Scan(&r.Distinct)
	}
	rows.Close()
	r.EventsPerSec = float64(r.Distinct) / el.Seconds()
	var s Summary
	s.Add("bench", "pipeline")
	s.Add("bus", cfg.Backend)
	s.Add("store", cfg.StoreName)
	s.Add("events", cfg.Events)
	s.Add("events_per_s", int(r.EventsPerSec))
	s.Add("lost", int64(cfg.Events)-int64(r.Distinct))
	s.Add("duplicated", int64(r.Stored)-int64(r.Distinct))
	s.Add("rss_mb", proc.RSSMB())
	s.Print(cfg.out())
	return r, nil
}

// PublishSynthetic publishes n events in batches of per over keys keys;
// event ids are unique (e0, e1, …).
func PublishSynthetic(ctx context.Context, pub bus.Publisher, n, per, keys int) error {
	now := time.Now().UTC()
	eb := event.Batch{Producer: "bench"}
	for bi := 0; bi*per < n; bi++ {
		key := fmt.Sprintf("key_bench_%05d", bi%keys)
		eb.ID = fmt.Sprintf("bench-%d", bi)
		eb.Events = eb.Events[:0]
		for i := bi * per; i < min((bi+1)*per, n); i++ {
			e := syntheticEvent
			e.ID, e.KeyID, e.Time = fmt.Sprintf("e%d", i), key, now.Add(time.Duration(i)*time.Microsecond)
			eb.Events = append(eb.Events, e)
		}
		eb.Created = time.Now()
		if _, err := pub.Publish(ctx, bus.Message{Key: key, BatchID: eb.ID, Source: "bench", Data: event.AppendBatch(nil, &eb)}); err != nil {
			return err
		}
	}
	return pub.Flush(ctx)
}
