package aggregator

import (
	"testing"

	"github.com/keymeter/keymeter/internal/event"
)

func TestEventBufsBestFitAndBounded(t *testing.T) {
	f := eventBufs{limit: 3000}
	small, big := make([]event.Event, 5, 1000), make([]event.Event, 0, 2000)
	small[0].ID = "kept alive?"
	f.put(big)
	f.put(small)
	if got := f.get(800); cap(got) != 1000 || len(got) != 0 {
		t.Fatalf("get(800) = len %d cap %d, want the 1000 slice (best fit), empty", len(got), cap(got))
	} else if got[:1][0].ID != "" {
		t.Fatal("a recycled slice still holds an event")
	}
	if got := f.get(1500); cap(got) != 2000 {
		t.Fatalf("get(1500) cap %d, want 2000", cap(got))
	}
	// The pool keeps at most limit events' room: the oldest go first.
	f.put(make([]event.Event, 0, 2000))
	f.put(make([]event.Event, 0, 2000))
	held := 0
	for _, b := range f.free {
		held += cap(b)
	}
	if held > f.limit || len(f.free) != 1 {
		t.Fatalf("pool holds %d slices, %d events' room; limit %d", len(f.free), held, f.limit)
	}
	// A slice far larger than asked is not handed out for a small block.
	g := eventBufs{limit: 100_000}
	g.put(make([]event.Event, 0, 50_000))
	if got := g.get(1000); cap(got) != 1000 || len(g.free) != 1 {
		t.Fatalf("get(1000) cap %d, want a new slice of 1000", cap(got))
	}
}
