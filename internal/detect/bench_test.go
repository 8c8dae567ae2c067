package detect

import (
	"runtime"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

type countSink struct{ n int }

func (c *countSink) Decide(*keymeterv1.Decision) { c.n++ }

func packEngine(b *testing.B) (*Engine, *countSink) {
	set, err := LoadPaths(CompileOptions{}, "../../rules")
	if err != nil {
		b.Fatal(err)
	}
	sink := &countSink{}
	e, err := New(Config{Sink: sink, MaxRevocationsPerHour: -1}, set)
	if err != nil {
		b.Fatal(err)
	}
	return e, sink
}

// BenchmarkEngine pushes a realistic mix over 100,000 keys through the
// whole starter pack, one batch of 4096 events per iteration.
func BenchmarkEngine(b *testing.B) {
	e, _ := packEngine(b)
	s := NewSynth(100_000, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Microsecond, 1)
	batch := make([]event.Event, 4096)
	// Warm the windows so the groups exist.
	for i := 0; i < 200; i++ {
		s.Fill(batch)
		e.ProcessBatch(batch)
	}
	b.ReportAllocs()
	var n int
	var busy time.Duration
	for b.Loop() {
		b.StopTimer()
		s.Fill(batch) // fresh events, advancing event time
		b.StartTimer()
		t := time.Now()
		e.ProcessBatch(batch)
		busy += time.Since(t)
		n += len(batch)
	}
	b.ReportMetric(float64(n)/busy.Seconds(), "events/s")
	b.ReportMetric(float64(busy.Nanoseconds())/float64(n), "ns/event")
}

// BenchmarkEngineMatureProfiles is BenchmarkEngine with every profile
// mature and seasonal from its first second, so the profile-guarded rules
// evaluate their whole conditions as they do in steady state (the
// synthetic history covers only seconds).
func BenchmarkEngineMatureProfiles(b *testing.B) {
	set, err := LoadPaths(CompileOptions{}, "../../rules")
	if err != nil {
		b.Fatal(err)
	}
	e, err := New(Config{Sink: &countSink{}, MaxRevocationsPerHour: -1, Profiles: ProfileConfig{Maturity: time.Second, Seasonal: time.Second, NoveltyGrace: time.Second}}, set)
	if err != nil {
		b.Fatal(err)
	}
	s := NewSynth(100_000, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 50*time.Microsecond, 1)
	batch := make([]event.Event, 4096)
	for i := 0; i < 200; i++ {
		s.Fill(batch)
		e.ProcessBatch(batch)
	}
	b.ReportAllocs()
	var n int
	var busy time.Duration
	for b.Loop() {
		b.StopTimer()
		s.Fill(batch)
		b.StartTimer()
		t := time.Now()
		e.ProcessBatch(batch)
		busy += time.Since(t)
		n += len(batch)
	}
	b.ReportMetric(float64(n)/busy.Seconds(), "events/s")
	b.ReportMetric(float64(busy.Nanoseconds())/float64(n), "ns/event")
}

// BenchmarkEngineMillionGroups measures memory with 1,000,000 active
// groups per key-grouped rule.
func BenchmarkEngineMillionGroups(b *testing.B) {
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		e, _ := packEngine(b)
		s := NewSynth(1_000_000, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Microsecond, 1)
		batch := make([]event.Event, 4096)
		for i := 0; i < 1_000_000/4096*5; i++ {
			s.Fill(batch)
			e.ProcessBatch(batch)
		}
		e.Flush()
		runtime.GC()
		runtime.ReadMemStats(&after)
		groups := 0
		maxGroups := 0
		for _, r := range e.Stats().Rules {
			groups += r.Groups
			maxGroups = max(maxGroups, r.Groups)
		}
		heap := float64(after.HeapInuse - before.HeapInuse)
		b.ReportMetric(float64(maxGroups), "groups/rule")
		b.ReportMetric(float64(groups), "groups_total")
		b.ReportMetric(heap/(1<<20), "heap_MB")
		b.ReportMetric(heap/float64(groups), "B/group")
		runtime.KeepAlive(e)
	}
}

// BenchmarkParallel is BenchmarkEngine with the rules split over two
// engines on two goroutines.
func BenchmarkParallel(b *testing.B) {
	set, err := LoadPaths(CompileOptions{}, "../../rules")
	if err != nil {
		b.Fatal(err)
	}
	p, err := NewParallel(Config{Sink: &countSink{}, MaxRevocationsPerHour: -1}, set, 2)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	s := NewSynth(100_000, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Microsecond, 1)
	batch := make([]event.Event, 4096)
	for i := 0; i < 200; i++ {
		s.Fill(batch)
		p.ProcessBatch(batch)
	}
	b.ReportAllocs()
	var n int
	var busy time.Duration
	for b.Loop() {
		b.StopTimer()
		s.Fill(batch)
		b.StartTimer()
		t := time.Now()
		p.ProcessBatch(batch)
		busy += time.Since(t)
		n += len(batch)
	}
	b.ReportMetric(float64(n)/busy.Seconds(), "events/s")
	b.ReportMetric(float64(busy.Nanoseconds())/float64(n), "ns/event")
}
