// Package ctxtime is waiting that a context can cut short: the retry and
// poll loops of the bus adapters, the aggregator and the benchmarks share it.
package ctxtime

import (
	"context"
	"time"
)

// Sleep waits for d or until ctx ends, whichever comes first; it returns
// ctx.Err() when ctx ended first (or had already ended).
func Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
