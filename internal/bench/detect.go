package bench

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/keymeter/keymeter/internal/bench/proc"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// DetectConfig is `keymeter bench detect`: synthetic events through a rule
// set split over Workers engines.
type DetectConfig struct {
	Rules   *detect.RuleSet
	Detect  detect.Config // Sink is set by RunDetect
	Events  int           // events to push through
	Keys    int           // distinct keys in the traffic
	Workers int           // engines the rules are split over
	Batch   int           // events per batch
	Output
}

type decisionCounter struct{ n int64 }

func (d *decisionCounter) Decide(*keymeterv1.Decision) { d.n++ }

// detectEngine is one engine or a parallel set of them.
type detectEngine struct {
	submit func(evs []event.Event, done func())
	stats  func() detect.Stats
	flush  func()
	close  func()
}

func newDetectEngine(cfg detect.Config, set *detect.RuleSet, workers int) (*detectEngine, error) {
	if workers == 1 {
		e, err := detect.New(cfg, set)
		if err != nil {
			return nil, err
		}
		return &detectEngine{submit: func(evs []event.Event, done func()) { e.ProcessBatch(evs); done() },
			stats: e.Stats, flush: e.Flush, close: func() {}}, nil
	}
	p, err := detect.NewParallel(cfg, set, workers)
	if err != nil {
		return nil, err
	}
	return &detectEngine{submit: p.Submit, stats: p.Stats, flush: p.Flush, close: p.Close}, nil
}

var synthStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// genCPUPerEvent is what generating an event costs in CPU seconds,
// measured alone so that it can be left out of the per-CPU-second figure.
func genCPUPerEvent(keys, per int) float64 {
	cal := detect.NewSynth(min(keys, 100_000), synthStart, time.Microsecond, 2)
	b := make([]event.Event, per)
	n := 0
	c0 := proc.CPU()
	for n < 200_000 {
		cal.Fill(b)
		n += len(b)
	}
	return (proc.CPU() - c0).Seconds() / float64(n)
}

// RunDetect pushes the events through and prints the summary line.
func RunDetect(_ context.Context, cfg DetectConfig) error {
	if cfg.Events <= 0 || cfg.Keys <= 0 || cfg.Batch <= 0 {
		return fmt.Errorf("--events, --keys and --batch must be positive")
	}
	workers, per, total := max(cfg.Workers, 1), cfg.Batch, cfg.Events
	sink := &decisionCounter{}
	cfg.logf("bench detect: %d rules, %d events over %d keys, %d worker(s)", cfg.Rules.Len(), total, cfg.Keys, workers)
	synth := detect.NewSynth(cfg.Keys, synthStart, time.Microsecond, 1)
	dcfg := cfg.Detect
	dcfg.Sink = sink
	eng, err := newDetectEngine(dcfg, cfg.Rules, workers)
	if err != nil {
		return err
	}
	defer eng.close()
	genPerEvent := genCPUPerEvent(cfg.Keys, per)
	// The engines take batches from a small pool that a generator goroutine
	// refills; with several workers each engine may run a few batches ahead.
	const pool = 8
	free := make(chan []event.Event, pool)
	for i := 0; i < pool; i++ {
		free <- make([]event.Event, per)
	}
	ready := make(chan []event.Event, pool)
	go func() {
		for left := total; left > 0; {
			b := <-free
			n := min(per, left)
			synth.Fill(b[:n])
			ready <- b[:n]
			left -= n
		}
		close(ready)
	}()
	done := 0
	cpu0 := proc.CPU()
	start := time.Now()
	lastTick := start
	for b := range ready {
		eng.submit(b, func() { free <- b[:cap(b)] })
		done += len(b)
		if time.Since(lastTick) >= time.Second {
			lastTick = time.Now()
			cfg.logf("bench detect: %d/%d events, %.0f events/s", done, total, float64(done)/time.Since(start).Seconds())
		}
	}
	for i := 0; i < pool; i++ { // every batch back: all processed
		<-free
	}
	wall := time.Since(start)
	cpu := (proc.CPU() - cpu0).Seconds()
	eng.flush()
	st := eng.stats()
	groups, maxGroups := 0, 0
	for _, r := range st.Rules {
		groups += r.Groups
		maxGroups = max(maxGroups, r.Groups)
	}
	runtime.GC()
	var s Summary
	s.Add("bench", "detect")
	s.Add("events", total)
	s.Add("events_per_s", fmt.Sprintf("%.0f", float64(total)/wall.Seconds()))
	// CPU time without generating the events: on a shared machine the
	// figure that does not depend on what else runs.
	genCPU := genPerEvent * float64(total)
	s.Add("events_per_cpu_s", fmt.Sprintf("%.0f", float64(total)/max(cpu-genCPU, 1e-9)))
	s.Add("gen_cpu_s", fmt.Sprintf("%.2f", genCPU))
	s.Add("rules", cfg.Rules.Len())
	s.Add("workers", workers)
	s.Add("keys", cfg.Keys)
	s.Add("groups", groups)
	s.Add("max_groups_per_rule", maxGroups)
	s.Add("decisions", sink.n)
	s.Add("rss_mb", fmt.Sprintf("%.0f", proc.RSSMB()))
	s.Print(cfg.out())
	return nil
}
