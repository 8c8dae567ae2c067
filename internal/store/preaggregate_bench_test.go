package store_test

import (
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

func BenchmarkPreAggregate(b *testing.B) {
	ev := make([]event.Event, 100_000)
	bench.Events(ev, 0, 1000, time.Now(), time.Hour, 2_000_000)
	for b.Loop() {
		store.PreAggregate(ev)
	}
	b.ReportMetric(float64(b.N*len(ev))/b.Elapsed().Seconds(), "events/s")
}
