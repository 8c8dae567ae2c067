package aggregator_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/store"
)

// TestReplayAboveAbortedRangeKeepsIt is the batch the lease test lost now
// and then. A member of generation 1 fenced its flush F1 (its intent
// aborted, nothing inserted, nothing acked) and recorded the next flush F2
// of the same partition, which the new owner found still pending (the old
// member aborts it a moment later, or died before it could) and replayed.
// Setting the partition's floor to F2's end made the new owner skip, and
// ack, F1's batches, which its consumer delivers again from the ack floor:
// they were never stored. The state is made directly in the store: four
// batches on one partition, nothing acked, F1 = batches 1-2 aborted, F2 =
// batches 3-4 pending, fence 1; one lease member then takes the partition
// in generation 1.
func TestReplayAboveAbortedRangeKeepsIt(t *testing.T) {
	e := newResentEnv(t, false)
	const per = 10
	var ms []bus.Message
	for i := range 4 {
		ms = append(ms, e.batch(fmt.Sprintf("hole-b%d", i), fmt.Sprintf("hole%d", i), per, false))
	}
	e.publish(ms...)
	b := e.prod.(aggregator.Bus)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := bus.Partition("key_a", 4)
	var pos []uint64
	if err := b.ReadRange(ctx, p, 1, 4, func(d bus.Delivery) error { pos = append(pos, d.Position); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(pos) != 4 {
		t.Fatalf("partition %d holds positions %v, want 4", p, pos)
	}
	part := fmt.Sprintf("events/%d", p)
	f1 := store.Intent{Consumer: "g", Partition: part, First: pos[0], Last: pos[1], Token: "g/e1/f1", State: store.IntentPending, Updated: time.Now()}
	f2 := store.Intent{Consumer: "g", Partition: part, First: pos[2], Last: pos[3], Token: "g/e1/f2", State: store.IntentPending, Updated: time.Now()}
	if err := e.db.Fence(ctx, "g", 1); err != nil {
		t.Fatal(err)
	}
	if err := e.db.RecordIntents(ctx, []store.Intent{f1, f2}); err != nil {
		t.Fatal(err)
	}
	if err := e.db.AbortIntent(ctx, "g", part, f1.Token); err != nil {
		t.Fatal(err)
	}

	a, err := aggregator.New(aggregator.Config{Group: "g", LeaseTTL: time.Second, FlushInterval: 50 * time.Millisecond,
		RetryBackoff: 20 * time.Millisecond}, b, e.db, aggregator.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(rctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("aggregator: %v", err)
		}
	}()
	// Done once every batch is acknowledged on the bus and no intent is
	// pending: whatever is stored then is all that ever will be.
	for {
		lag, err := b.Lag(ctx, "g")
		if err != nil {
			t.Fatal(err)
		}
		pending, err := e.db.Intents(ctx, "g")
		if err != nil {
			t.Fatal(err)
		}
		if l, ok := lag[p]; ok && l == 0 && len(pending) == 0 && a.Stats().Replayed > 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("partition %d not acknowledged within 90s (lag %v, pending intents %d)", p, lag, len(pending))
		}
		time.Sleep(50 * time.Millisecond)
	}
	rows, distinct := e.stored()
	if rows != 4*per || distinct != 4*per {
		t.Fatalf("stored %d rows (%d distinct) of %d events: the aborted range below the replayed one was acknowledged without being stored", rows, distinct, 4*per)
	}
}
