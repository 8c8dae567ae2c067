package kafkabus_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
)

// TestDecisionsSinceSynced: the channel closes only after every decision
// published before the call was passed to fn, and at once on an empty log.
func TestDecisionsSinceSynced(t *testing.T) {
	b, _ := newBus(t, nil)
	ctx := ctxT(t, time.Minute)
	empty, err := b.SubscribeDecisionsSinceSynced(ctx, time.Unix(0, 0), func([]byte) {})
	if err != nil {
		t.Fatal(err)
	}
	<-empty
	const n = 40
	for i := range n {
		if err := b.PublishDecision(ctx, fmt.Sprintf("k%d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := 0
	caughtUp, err := b.SubscribeDecisionsSinceSynced(ctx, time.Unix(0, 0), func([]byte) { mu.Lock(); seen++; mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-caughtUp:
	case <-ctx.Done():
		t.Fatal("never caught up")
	}
	mu.Lock()
	defer mu.Unlock()
	if seen < n {
		t.Fatalf("caught up after %d of %d decisions", seen, n)
	}
}

// TestDeleteGroup: a tail's group is gone from the broker after
// DeleteGroup (its committed offsets too); deleting it again is no error.
func TestDeleteGroup(t *testing.T) {
	b, _ := newBus(t, nil)
	ctx := ctxT(t, time.Minute)
	publish(t, b.Publisher(), bus.Message{Key: "k", BatchID: "del-1", Source: "test", Data: []byte("x")})
	c, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "tail-del"})
	if err != nil {
		t.Fatal(err)
	}
	ds := consume(t, c, 1, true)
	if len(ds) != 1 {
		t.Fatalf("deliveries: %d", len(ds))
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if lag, err := b.Lag(ctx, "tail-del"); err != nil || sum(lag) != 0 {
		t.Fatalf("lag before the delete: %v %v, want 0", lag, err)
	}
	if err := b.DeleteGroup(ctx, "tail-del"); err != nil {
		t.Fatal(err)
	}
	// Without the group's committed offset, the batch counts as pending.
	if lag, err := b.Lag(ctx, "tail-del"); err != nil || sum(lag) != 1 {
		t.Fatalf("lag after the delete: %v %v, want the 1 batch (no committed offset)", lag, err)
	}
	if err := b.DeleteGroup(ctx, "tail-del"); err != nil {
		t.Fatalf("deleting a deleted group: %v", err)
	}
}

func sum(m map[int]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}
