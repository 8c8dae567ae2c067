package aggregator

import (
	"testing"
)

// Blocks grow while the store is behind (a block fills with the insert
// before it still running), never past MaxBurstBlockEvents, and shrink back
// to MaxBlockEvents once inserts keep up.
func TestBlockTargetGrowsUnderBacklogBounded(t *testing.T) {
	a := &Aggregator{cfg: Config{MaxBlockEvents: 1000, MaxBurstBlockEvents: 2500}.withDefaults()}
	r := &consumeLoop{a: a, target: 1000}
	busy := make(chan error, 1) // a flush under way: nothing sent yet
	var seen []int
	for range 6 {
		r.buffered, r.inflight = r.target, busy
		r.resize()
		seen = append(seen, r.target)
	}
	if r.target != 2500 || seen[0] != 1500 {
		t.Fatalf("targets under backlog %v, want 1500 first and 2500 (the burst bound) at the end", seen)
	}
	// The insert finished before the block filled: it keeps up, so the
	// target comes down, and the flush's result is kept for waitFlush.
	done := make(chan error, 1)
	done <- nil
	r.buffered, r.inflight = r.target, done
	r.resize()
	if r.target != 2250 {
		t.Fatalf("target %d after a block filled with the store idle, want 2250", r.target)
	}
	if err := r.waitFlush(); err != nil || r.inflight != nil {
		t.Fatalf("the finished flush's result was lost: %v", err)
	}
	// A flush by time (block not full) halves it, down to MaxBlockEvents.
	for range 4 {
		r.buffered = r.target / 3
		r.resize()
	}
	if r.target != 1000 {
		t.Fatalf("target %d after flushes by time, want 1000", r.target)
	}
	// Equal bounds: no growth.
	a.cfg.MaxBurstBlockEvents = 1000
	r.buffered, r.inflight = r.target, busy
	r.resize()
	if r.target != 1000 {
		t.Fatalf("target %d with max-burst-block-events = max-block-events, want 1000", r.target)
	}
}

func TestBurstBlockValidated(t *testing.T) {
	c := Config{MaxBlockEvents: 1000, MaxBurstBlockEvents: 999}
	if err := c.Validate(); err == nil {
		t.Fatal("max-burst-block-events below max-block-events accepted")
	}
	if got := (Config{MaxBlockEvents: 1000}).LargestBlock(); got != 2000 {
		t.Fatalf("default largest block %d, want 2000", got)
	}
}
