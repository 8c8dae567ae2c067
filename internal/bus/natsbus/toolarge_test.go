package natsbus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
)

// TestPublishTooLarge: a batch over the server's max_payload is refused
// with bus.ErrTooLarge (permanent: callers split it), the publisher
// reports the limit, and the connection goes on publishing.
func TestPublishTooLarge(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := New(ctx, Config{Partitions: 2}, WithEmbeddedServer(EmbeddedConfig{DataDir: t.TempDir(), MaxPayload: 4096}))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	pub := b.Publisher()
	if got := bus.MaxMessageBytes(pub); got != 4096 {
		t.Fatalf("MaxMessageBytes %d, want 4096", got)
	}
	_, err = pub.Publish(ctx, bus.Message{Key: "k", BatchID: "big", Source: "t", Data: make([]byte, 10_000)})
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
	if _, err := StartEmbedded(EmbeddedConfig{DataDir: t.TempDir(), MaxPayload: -1}); err == nil {
		t.Fatal("negative max payload accepted")
	}
}
