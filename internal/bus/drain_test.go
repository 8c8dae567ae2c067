package bus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

// WaitDrained reports what is pending while nothing consumes, and returns
// 0 once the group has acknowledged everything.
func TestWaitDrained(t *testing.T) {
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "drain"})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close(context.Background())
	const n = 6
	for i := range n {
		k := fmt.Sprintf("key_%d", i)
		a, err := b.Publisher().Publish(ctx, bus.Message{Key: k, BatchID: "drain-" + k, Source: "test", Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		<-a.Done()
		if err := a.Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Long enough for a Lag call to answer on a loaded machine; what is
	// checked is that the deadline ends the wait with the count pending.
	short, stop := context.WithTimeout(ctx, 3*time.Second)
	pending, err := bus.WaitDrained(short, b, "drain", 20*time.Millisecond)
	stop()
	if pending != n || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("nothing consumed: pending %d, err %v; want %d, deadline exceeded", pending, err, n)
	}
	tctx, stopTail := context.WithCancel(ctx)
	seen := 0
	if err := bus.Tail(tctx, cons, func(bus.Delivery) {
		if seen++; seen == n {
			stopTail()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if pending, err := bus.WaitDrained(ctx, b, "drain", 20*time.Millisecond); pending != 0 || err != nil {
		t.Fatalf("all consumed: pending %d, err %v", pending, err)
	}
}
