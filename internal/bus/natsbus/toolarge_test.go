package natsbus

import (
	"context"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus/bustest"
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
	bustest.TooLarge(t, b.Publisher(), 4096)
	if _, err := StartEmbedded(EmbeddedConfig{DataDir: t.TempDir(), MaxPayload: -1}); err == nil {
		t.Fatal("negative max payload accepted")
	}
}
