package natsbus

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
)

// TestTakeoverCutsOffOldOwner: a process binding a partition that another
// process still reads takes it over: from then on only the new owner gets
// its batches, and the old one is told (ErrConsumerLost). The old code
// reused the durable consumer when nothing was pending, so both pulled
// from it: batches went to the old owner (a partition lease's dead or
// fenced member, which never stores them) while the new owner's AckAll of
// a later batch acknowledged them unprocessed — lost events.
func TestTakeoverCutsOffOldOwner(t *testing.T) {
	srv := testServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	newBus := busMaker(ctx, t, srv, Config{Prefix: "take", Partitions: 1})
	a, b := newBus(), newBus()
	publish := func(from, to int) {
		pub := a.Publisher()
		for i := from; i < to; i++ {
			if _, err := pub.Publish(ctx, bus.Message{Key: "k", BatchID: fmt.Sprintf("b%d", i), Source: "t", Data: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
		if err := pub.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cfg := bus.ConsumerConfig{Group: "g", Partitions: []int{0}, AckWait: time.Minute}
	ca, err := a.NewConsumer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(context.Background())
	// The old owner has read and acked everything and waits for more.
	publish(0, 1)
	ds, err := ca.Fetch(ctx, 10, 10*time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("old owner's first fetch: %d deliveries, %v", len(ds), err)
	}
	if err := ca.Ack(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	cb, err := b.NewConsumer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close(context.Background())
	const n = 20
	publish(1, 1+n)

	var got []uint64
	for deadline := time.Now().Add(20 * time.Second); len(got) < n && time.Now().Before(deadline); {
		ds, err := cb.Fetch(ctx, 100, 200*time.Millisecond)
		if err != nil {
			t.Fatalf("new owner: %v", err)
		}
		for _, d := range ds {
			got = append(got, d.Position)
		}
	}
	var old []uint64
	var lost error
	for deadline := time.Now().Add(20 * time.Second); lost == nil && time.Now().Before(deadline); {
		ds, err := ca.Fetch(ctx, 100, 200*time.Millisecond)
		for _, d := range ds {
			old = append(old, d.Position)
		}
		if err != nil {
			lost = err
		}
	}
	if len(old) > 0 {
		t.Errorf("the old owner got positions %v after the takeover", old)
	}
	if !errors.Is(lost, bus.ErrConsumerLost) {
		t.Errorf("old owner after the takeover: %v, want ErrConsumerLost", lost)
	}
	if len(got) != n || got[0] != 2 || got[n-1] != n+1 {
		t.Fatalf("new owner got positions %v, want 2-%d in order", got, n+1)
	}
}
