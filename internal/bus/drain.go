package bus

import (
	"context"
	"time"
)

// WaitDrained polls b every poll until the consumer group has nothing
// pending in any partition (it then returns 0, nil), or until ctx ends: it
// then returns the batches pending at the last poll Lag answered, with the
// last Lag error, or with ctx's error when Lag had answered.
func WaitDrained(ctx context.Context, b Bus, group string, poll time.Duration) (uint64, error) {
	t := time.NewTimer(poll)
	defer t.Stop()
	var total uint64 // at the last answered poll
	for {
		lag, err := b.Lag(ctx, group)
		if err == nil {
			total = 0
			for _, n := range lag {
				total += n
			}
			if total == 0 {
				return 0, nil
			}
		}
		t.Reset(poll)
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return total, err
		case <-t.C:
		}
	}
}
