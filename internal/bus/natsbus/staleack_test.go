package natsbus

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymeter/keymeter/internal/bus"
)

// TestStaleAckAfterTakeover: an ack the old owner sends after the takeover
// (an insert that passed the fence just before it, acked late) must not
// stop the new owner's acks from counting.
func TestStaleAckAfterTakeover(t *testing.T) {
	srv := testServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	newBus := busMaker(ctx, t, srv, Config{Prefix: "stale", Partitions: 1})
	a, b := newBus(), newBus()
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := a.Publisher().Publish(ctx, bus.Message{Key: "k", BatchID: fmt.Sprintf("b%d", i), Source: "t", Data: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Publisher().Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fetch := func(c bus.Consumer, n int) []bus.Delivery {
		var out []bus.Delivery
		for len(out) < n {
			ds, err := c.Fetch(ctx, n-len(out), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, ds...)
		}
		return out
	}
	cfg := bus.ConsumerConfig{Group: "g", Partitions: []int{0}, AckWait: time.Minute}
	ca, err := a.NewConsumer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(context.Background())
	publish(0, 50)
	old := fetch(ca, 50)
	if err := ca.Ack(ctx, old[9]); err != nil { // 1-10 stored and acked; 11-50 in a slow insert
		t.Fatal(err)
	}
	cb, err := b.NewConsumer(ctx, cfg) // takes over at the ack floor, 10
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close(context.Background())
	publish(50, 60)
	got := fetch(cb, 50)     // 11-60
	_ = ca.Ack(ctx, old[49]) // the old owner's late ack of 50 (stored: it passed the fence); lost now
	if err := cb.Ack(ctx, got[49]); err != nil {
		t.Fatal(err)
	}
	info := b.partitionConsumer(ctx, t, "g", 0)
	if info.AckFloor.Stream != got[49].Position || info.NumAckPending != 0 {
		t.Fatalf("after the new owner acked position %d: ack floor %d, %d pending", got[49].Position, info.AckFloor.Stream, info.NumAckPending)
	}
}

// partitionConsumer is the current consumer of group's partition p.
func (b *Bus) partitionConsumer(ctx context.Context, t *testing.T, group string, p int) *jetstream.ConsumerInfo {
	t.Helper()
	cs, err := b.groupConsumers(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.currentConsumer(ctx, cs[p])
	if err != nil || info == nil {
		t.Fatalf("consumer of %s partition %d: %v", group, p, err)
	}
	return info
}
