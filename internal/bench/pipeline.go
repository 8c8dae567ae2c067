package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
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
	// BurstBlockSize is the aggregator's MaxBurstBlockEvents (0: its
	// default, 2×BlockSize; BlockSize: blocks do not grow).
	BurstBlockSize int
	// MemoryLimit is the soft memory limit set for the pipeline phase, as
	// the aggregator role sets it (not for the store alone).
	MemoryLimit aggregator.MemoryLimit
	// CompareStore first inserts the same number of events straight into
	// the store (a second database on the same engine, batches of
	// BlockSize, one writer, as the aggregator inserts), then runs the
	// pipeline, and prints both rates and their ratio in one line.
	CompareStore bool
	// CPUProfile, when set, is written with a CPU profile of the pipeline
	// phase (not the store-alone phase).
	CPUProfile string
	// MemProfile, when set, is written with a heap profile (live objects at
	// the pipeline's peak: taken when the last events are stored).
	MemProfile string
	Logger     *slog.Logger
	Output
}

// PipelineResult is what RunPipeline measured.
type PipelineResult struct {
	Events       int
	Stored       uint64 // rows
	Distinct     uint64 // distinct event ids among them
	EventsPerSec float64
	CPU          time.Duration // process CPU during the pipeline phase
	RSSMB        float64       // resident set at the end of the pipeline phase
	Blocks       uint64        // inserts the aggregator made
	// With CompareStore: the store alone on the same events.
	StoreEventsPerSec float64
	StoreCPU          time.Duration
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
	acfg := aggregator.Config{Group: "bench", MaxBlockEvents: cfg.BlockSize, MaxBurstBlockEvents: cfg.BurstBlockSize, FlushInterval: time.Second}
	if err := acfg.Validate(); err != nil {
		return r, err
	}
	st := cfg.Store
	var sr StoreResult
	if cfg.CompareStore {
		var err error
		if sr, err = compareStore(ctx, cfg); err != nil {
			return r, err
		}
		r.StoreEventsPerSec, r.StoreCPU = sr.EventsPerSec, sr.CPU
	}
	// The pipeline phase only, as the aggregator role sets it: the store
	// alone is the reference and runs as it would without keymeter's
	// roles (a limit costs it collector work too).
	defer cfg.MemoryLimit.Apply(acfg.LargestBlock(), cfg.Logger)()
	stopProfile, err := pipelineCPUProfile(cfg.CPUProfile)
	if err != nil {
		return r, err
	}
	defer stopProfile()
	agg, err := aggregator.New(acfg, cfg.Bus, st, aggregator.WithLogger(cfg.Logger))
	if err != nil {
		return r, err
	}
	actx, stop := context.WithCancel(ctx)
	defer stop()
	aggDone := make(chan error, 1)
	go func() { aggDone <- agg.Run(actx) }()

	cfg.logf("bench pipeline: bus=%s store=%s events=%d batch=%d keys=%d", cfg.Backend, cfg.StoreName, cfg.Events, cfg.Batch, cfg.Keys)
	cpu0 := proc.CPU()
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
	r.CPU = proc.CPU() - cpu0
	if cfg.MemProfile != "" {
		if err := writeHeapProfile(cfg.MemProfile); err != nil {
			return r, err
		}
	}
	r.RSSMB = proc.RSSMB()
	r.Blocks = agg.Stats().Blocks
	stop()
	<-aggDone
	if err := pipelineCounts(ctx, st, &r); err != nil {
		return r, err
	}
	r.EventsPerSec = float64(r.Distinct) / el.Seconds()
	pipelineSummary(cfg, r, sr).Print(cfg.out())
	return r, nil
}

// pipelineCounts reads back the rows stored and the distinct event ids
// among them.
func pipelineCounts(ctx context.Context, st *store.DB, r *PipelineResult) error {
	var err error
	if r.Stored, err = st.Count(ctx, "requests"); err != nil {
		return err
	}
	rows, err := st.Conn().Query(ctx, "SELECT toUInt64(uniqExact(event_id)) FROM `"+st.Database()+"`.requests", nil)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		_ = rows.Scan(&r.Distinct)
	}
	return rows.Err()
}

// pipelineSummary is RunPipeline's name=value line; sr is the store-alone
// run of CompareStore.
func pipelineSummary(cfg PipelineConfig, r PipelineResult, sr StoreResult) *Summary {
	s := &Summary{}
	s.Add("bench", "pipeline")
	s.Add("bus", cfg.Backend)
	s.Add("store", cfg.StoreName)
	s.Add("events", cfg.Events)
	s.Add("events_per_s", int(r.EventsPerSec))
	s.Add("lost", int64(cfg.Events)-int64(r.Distinct))
	s.Add("duplicated", int64(r.Stored)-int64(r.Distinct))
	s.Add("blocks", r.Blocks)
	s.Add("rss_mb", fmt.Sprintf("%.0f", r.RSSMB))
	s.Add("peak_rss_mb", fmt.Sprintf("%.0f", proc.PeakRSSMB()))
	// Whole-process CPU (publisher, embedded bus server, aggregator and
	// engine) per event stored: steadier than events/s on a shared machine.
	s.Add("cpu_ns_per_event", fmt.Sprintf("%.0f", perEvent(r.CPU, r.Distinct)))
	if cfg.CompareStore {
		s.Add("store_events_per_s", fmt.Sprintf("%.0f", r.StoreEventsPerSec))
		s.Add("store_cpu_ns_per_event", fmt.Sprintf("%.0f", perEvent(r.StoreCPU, uint64(sr.Events))))
		s.Add("ratio", fmt.Sprintf("%.2f", r.EventsPerSec/r.StoreEventsPerSec))
		s.Add("cpu_ratio", fmt.Sprintf("%.2f", perEvent(r.CPU, r.Distinct)/perEvent(r.StoreCPU, uint64(sr.Events))))
	}
	return s
}

func perEvent(cpu time.Duration, n uint64) float64 {
	if n == 0 {
		return 0
	}
	return float64(cpu.Nanoseconds()) / float64(n)
}

// compareStore inserts cfg.Events generated events into a second database
// on cfg.Store's engine, as the aggregator would (blocks of BlockSize, one
// writer), and checks that all of them arrived.
func compareStore(ctx context.Context, cfg PipelineConfig) (StoreResult, error) {
	d, err := store.NewDB(cfg.Store.Conn(), cfg.Store.Database()+"_store")
	if err != nil {
		return StoreResult{}, err
	}
	if _, err := d.Migrate(ctx); err != nil {
		return StoreResult{}, err
	}
	cfg.logf("bench pipeline: store alone first: events=%d batch=%d database=%s", cfg.Events, max(cfg.BlockSize, 1), d.Database())
	sr, err := StoreInsert(ctx, StoreConfig{DB: d, Backend: cfg.StoreName, Events: cfg.Events, Batch: max(cfg.BlockSize, 1),
		Keys: cfg.Keys, Rollups: store.RollupPreaggregated, Writers: 1, Output: cfg.Output})
	if err != nil {
		return sr, err
	}
	if sr.Stored != uint64(cfg.Events) {
		return sr, fmt.Errorf("bench pipeline: the store alone stored %d events, want %d", sr.Stored, cfg.Events)
	}
	cfg.logf("bench pipeline: store alone: %.0f events/s, %.0f CPU-ns/event", sr.EventsPerSec, perEvent(sr.CPU, uint64(sr.Events)))
	return sr, nil
}

// PublishSynthetic publishes n events in batches of per over keys keys;
// event ids are unique (e0, e1, …).
func PublishSynthetic(ctx context.Context, pub bus.Publisher, n, per, keys int) error {
	now := time.Now().UTC()
	eb := event.Batch{Producer: "bench"}
	last := 0
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
		// A new buffer each time (the bus may hold it until acknowledged),
		// sized like the last so encoding does not grow it.
		data := event.AppendBatch(make([]byte, 0, last+last/8), &eb)
		last = len(data)
		if _, err := pub.Publish(ctx, bus.Message{Key: key, BatchID: eb.ID, Source: "bench", Data: data}); err != nil {
			return err
		}
	}
	return pub.Flush(ctx)
}

// pipelineCPUProfile starts a CPU profile into path ("": none) and returns
// what stops it.
func pipelineCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
