package kafkabus_test

import (
	"fmt"
	"sync"
	"testing"
	"time"
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
