package kafkabus_test

import (
	"testing"

	"github.com/keymeter/keymeter/internal/bus/bustest"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
)

// TestPublishTooLarge: a batch over MaxMessageBytes is refused with
// bus.ErrTooLarge (permanent: callers split it), the publisher reports its
// limit, and publishing goes on.
func TestPublishTooLarge(t *testing.T) {
	b, _ := newBus(t, func(c *kafkabus.Config) { c.MaxMessageBytes = 4096 })
	bustest.TooLarge(t, b.Publisher(), 4096)
}
