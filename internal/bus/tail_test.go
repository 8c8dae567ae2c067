package bus_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

// Tail hands over every delivery and acknowledges them in every
// partition: once it stops, the group has nothing pending.
func TestTailAcksEveryPartition(t *testing.T) {
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 4})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "tail"})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close(context.Background())
	const n = 12
	for i := range n {
		k := fmt.Sprintf("key_%d", i)
		a, err := b.Publisher().Publish(ctx, bus.Message{Key: k, BatchID: "tail-" + k, Source: "test", Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		<-a.Done()
		if err := a.Err(); err != nil {
			t.Fatal(err)
		}
	}
	tctx, stop := context.WithCancel(ctx)
	partitions := map[int]bool{}
	seen := 0
	err = bus.Tail(tctx, cons, func(d bus.Delivery) {
		partitions[d.Partition] = true
		if seen++; seen == n {
			stop()
		}
	})
	if err != nil || seen != n {
		t.Fatalf("tail: %v after %d deliveries", err, seen)
	}
	if len(partitions) < 2 {
		t.Fatalf("the keys landed in %d partition(s): the test needs several", len(partitions))
	}
	lag, err := b.Lag(ctx, "tail")
	if err != nil {
		t.Fatal(err)
	}
	for p, l := range lag {
		if l != 0 {
			t.Errorf("partition %d: %d batches not acknowledged", p, l)
		}
	}
}
