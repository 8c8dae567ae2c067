package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

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
//
// It is the benchmark's load generator, and its CPU counts in the
// pipeline's: the batches are the bytes event.AppendBatch makes of
// syntheticEvent with each event's id, key and time set
// (TestSyntheticEncoderMatchesAppendBatch), but the fields that do not
// change are encoded once, ids are formatted without fmt, and a batch's
// buffer is reused once the bus has acknowledged it (profiled: fmt.Sprintf
// per event, encoding and a new buffer per batch were ~9% of the pipeline's
// CPU and ~300 MB of its allocation, which drives the collector).
func PublishSynthetic(ctx context.Context, pub bus.Publisher, n, per, keys int) error {
	now := time.Now().UTC()
	enc := newSyntheticEncoder(keys)
	var recycle bufRing
	last := 0
	for bi := 0; bi*per < n; bi++ {
		from, to := bi*per, min((bi+1)*per, n)
		buf := recycle.get()
		if buf == nil {
			buf = make([]byte, 0, last+last/8) // sized like the last, so encoding does not grow it
		}
		data := enc.appendBatch(buf, bi, from, to, now)
		last = len(data)
		ack, err := pub.Publish(ctx, bus.Message{Key: enc.key(bi), BatchID: enc.batchID, Source: "bench", Data: data})
		if err != nil {
			return err
		}
		recycle.put(ack, data)
	}
	return pub.Flush(ctx)
}

// bufRing recycles the buffers of published batches once the bus has
// acknowledged them (the bus may hold a message's bytes until then).
type bufRing struct {
	q []pendingBuf // in publish order
}

type pendingBuf struct {
	ack bus.PubAck
	buf []byte
}

// maxRecycled bounds the buffers waiting for their ack in a bufRing.
const maxRecycled = 256

// get returns the buffer of the oldest batch if it is acknowledged, else nil
// (append allocates).
func (r *bufRing) get() []byte {
	if len(r.q) == 0 {
		return nil
	}
	select {
	case <-r.q[0].ack.Done():
		b := r.q[0].buf[:0]
		r.q[0] = pendingBuf{}
		r.q = r.q[1:]
		return b
	default:
		return nil
	}
}

func (r *bufRing) put(ack bus.PubAck, buf []byte) {
	if ack == nil {
		return
	}
	if len(r.q) >= maxRecycled {
		r.q[0] = pendingBuf{} // left to the collector once the bus is done with it
		r.q = r.q[1:]
	}
	r.q = append(r.q, pendingBuf{ack: ack, buf: buf})
}

// syntheticEncoder encodes PublishSynthetic's batches.
type syntheticEncoder struct {
	keys    []string
	keyTags [][]byte // field 4 (key_id) of each key, encoded
	project []byte   // field 3, encoded
	tail    []byte   // fields 5-18 of syntheticEvent, encoded
	batchID string   // of the last batch encoded
	num     []byte   // scratch for ids
}

func newSyntheticEncoder(keys int) *syntheticEncoder {
	e := &syntheticEncoder{keys: make([]string, keys), keyTags: make([][]byte, keys)}
	for i := range keys {
		k := strconv.Itoa(i)
		if len(k) < 5 {
			k = strings.Repeat("0", 5-len(k)) + k
		}
		e.keys[i] = "key_bench_" + k
		e.keyTags[i] = protowire.AppendString(protowire.AppendTag(nil, 4, protowire.BytesType), e.keys[i])
	}
	e.project = protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), syntheticEvent.Project)
	t := syntheticEvent
	t.ID, t.Time, t.Project, t.KeyID = "", time.Time{}, "", "" // fields 1-4: per event
	e.tail = event.AppendEvent(nil, &t)
	return e
}

// key is the key of batch bi.
func (e *syntheticEncoder) key(bi int) string { return e.keys[bi%len(e.keys)] }

// appendBatch appends batch bi, events from..to-1, to dst: what
// event.AppendBatch makes of Batch{ID: "bench-<bi>", Producer: "bench",
// Created: now} with syntheticEvent's copies of id "e<i>", the key of bi
// and time start+i µs.
func (e *syntheticEncoder) appendBatch(dst []byte, bi, from, to int, start time.Time) []byte {
	e.num = strconv.AppendInt(append(e.num[:0], "bench-"...), int64(bi), 10)
	e.batchID = string(e.num)
	dst = protowire.AppendString(protowire.AppendTag(dst, 1, protowire.BytesType), e.batchID)
	dst = protowire.AppendString(protowire.AppendTag(dst, 2, protowire.BytesType), "bench")
	dst = protowire.AppendVarint(protowire.AppendTag(dst, 3, protowire.VarintType), uint64(time.Now().UnixNano()))
	keyTag := e.keyTags[bi%len(e.keyTags)]
	base := start.UnixNano()
	for i := from; i < to; i++ {
		e.num = strconv.AppendInt(append(e.num[:0], 'e'), int64(i), 10)
		ns := uint64(base + int64(i)*int64(time.Microsecond))
		size := protowire.SizeTag(1) + protowire.SizeBytes(len(e.num)) +
			protowire.SizeTag(2) + protowire.SizeVarint(ns) +
			len(e.project) + len(keyTag) + len(e.tail)
		dst = protowire.AppendVarint(protowire.AppendTag(dst, 4, protowire.BytesType), uint64(size))
		dst = protowire.AppendBytes(protowire.AppendTag(dst, 1, protowire.BytesType), e.num)
		dst = protowire.AppendVarint(protowire.AppendTag(dst, 2, protowire.VarintType), ns)
		dst = append(dst, e.project...)
		dst = append(dst, keyTag...)
		dst = append(dst, e.tail...)
	}
	return dst
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
