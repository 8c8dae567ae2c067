package kafkabus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
)

// TestPublishTooLarge: a batch over MaxMessageBytes is refused with
// bus.ErrTooLarge (permanent: callers split it), the publisher reports its
// limit, and publishing goes on.
func TestPublishTooLarge(t *testing.T) {
	b, _ := newBus(t, func(c *kafkabus.Config) { c.MaxMessageBytes = 4096 })
	pub := b.Publisher()
	if got := bus.MaxMessageBytes(pub); got != 4096 {
		t.Fatalf("MaxMessageBytes %d, want 4096", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := pub.Publish(ctx, bus.Message{Key: "k", BatchID: "big", Source: "t", Data: make([]byte, 10_000)})
	if !errors.Is(err, bus.ErrTooLarge) {
		t.Fatalf("10 KB batch: %v, want bus.ErrTooLarge", err)
	}
	ack, err := pub.Publish(ctx, bus.Message{Key: "k", BatchID: "small", Source: "t", Data: make([]byte, 100)})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ack.Done():
	case <-ctx.Done():
		t.Fatal("small batch never acknowledged")
	}
	if err := ack.Err(); err != nil {
		t.Fatal(err)
	}
}
