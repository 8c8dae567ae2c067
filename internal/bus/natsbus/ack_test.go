package natsbus

import (
	"context"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
)

// TestAckAgainAfterConfirmed: acking a delivery whose ack was already
// confirmed succeeds. An aggregator acks the last delivery of each
// partition and, when one of those acks fails (no consumer leader for a
// moment in a cluster), retries them all: the old code refused the
// confirmed ones with ErrMsgAlreadyAckd on every retry, for ever.
func TestAckAgainAfterConfirmed(t *testing.T) {
	srv := testServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := New(ctx, Config{Partitions: 1}, WithEmbedded(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close(ctx) }()
	ack, err := b.Publisher().Publish(ctx, bus.Message{Key: "k", BatchID: "b1", Source: "t", Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	<-ack.Done()
	if err := ack.Err(); err != nil {
		t.Fatal(err)
	}
	c, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	ds, err := c.Fetch(ctx, 1, 10*time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("fetch: %d deliveries, %v", len(ds), err)
	}
	if err := c.Ack(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, ds[0]); err != nil {
		t.Fatalf("second ack of a confirmed delivery: %v", err)
	}
}
