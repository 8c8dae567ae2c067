package natsbus

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymeter/keymeter/internal/bus"
)

// TestBindWithoutStream: a consumer that cannot bind because the events
// stream is missing (deleted by an operator, or not yet created in a
// cluster) fails clearly with fixed partitions, naming the group and the
// partition; with leases it keeps its generation pending, retries on every
// Fetch, and reads once the stream is back.
func TestBindWithoutStream(t *testing.T) {
	srv := testServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := Config{Prefix: "bind", Partitions: 2}
	b, err := New(ctx, cfg, WithEmbedded(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close(context.Background()) }()
	if err := b.js.DeleteStream(ctx, b.streams.events); err != nil {
		t.Fatal(err)
	}

	_, err = b.NewConsumer(ctx, bus.ConsumerConfig{Group: "g", Partitions: []int{1}})
	if err == nil || !errors.Is(err, jetstream.ErrStreamNotFound) || !strings.Contains(err.Error(), "consumer g partition 1") {
		t.Fatalf("fixed partitions without the stream: %v, want stream not found naming consumer g partition 1", err)
	}

	c, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "g", LeaseTTL: 500 * time.Millisecond})
	if err != nil {
		t.Fatalf("leases without the stream: %v, want the bind to be retried on Fetch", err)
	}
	defer c.Close(context.Background())
	lc := c.(*leaseConsumer)
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		ds, err := c.Fetch(ctx, 10, 100*time.Millisecond)
		if err != nil || len(ds) > 0 {
			t.Fatalf("fetch without the stream: %d deliveries, %v; want none and no error (retrying)", len(ds), err)
		}
	}
	if g := lc.Generation(); g != 0 {
		t.Fatalf("generation %d entered without its partitions bound", g)
	}

	// The stream comes back (any process's New provisions it).
	b2, err := New(ctx, cfg, WithEmbedded(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b2.Close(context.Background()) }()
	ack, err := b2.Publisher().Publish(ctx, bus.Message{Key: "k", BatchID: "b1", Source: "t", Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	<-ack.Done()
	if err := ack.Err(); err != nil {
		t.Fatal(err)
	}
	for {
		ds, err := c.Fetch(ctx, 10, 200*time.Millisecond)
		if err != nil {
			t.Fatalf("fetch after the stream is back: %v", err)
		}
		if len(ds) == 1 && ds[0].BatchID == "b1" {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the lease consumer did not bind after the stream came back")
		}
	}
	if g := lc.Generation(); g == 0 || len(lc.Assigned()) != 2 {
		t.Fatalf("after binding: generation %d, partitions %v; want a generation with both", g, lc.Assigned())
	}
}
