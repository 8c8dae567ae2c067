package bus

import (
	"context"

	"github.com/keymeter/keymeter/internal/event"
)

// TailEvents calls fn for every event of the batches c delivers until ctx
// ends (Tail acknowledges them). Invalid deliveries and batches that do not
// decode are skipped: a tail shows what it can read.
func TailEvents(ctx context.Context, c Consumer, fn func(*event.Event)) error {
	var eb event.Batch
	return Tail(ctx, c, func(d Delivery) {
		if d.Invalid != "" || event.DecodeBatch(d.Data, &eb) != nil {
			return
		}
		for i := range eb.Events {
			fn(&eb.Events[i])
		}
	})
}
