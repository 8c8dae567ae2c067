package store

import (
	"context"
	"io"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// EventSource reads the stored events of [from, to), oldest first, one
// at a time (detect.EventSource: what a backtest takes). Stop ends the
// scan early; it is safe to call more than once.
type EventSource struct {
	ch     chan event.Event
	errc   chan error
	cancel context.CancelFunc
}

// Events returns a source of the stored events of [from, to). The scan
// runs in pages in the background, a bounded way ahead of Next.
func (d *DB) Events(ctx context.Context, from, to time.Time) *EventSource {
	ctx, cancel := context.WithCancel(ctx)
	s := &EventSource{ch: make(chan event.Event, 4096), errc: make(chan error, 1), cancel: cancel}
	go func() {
		defer close(s.ch)
		s.errc <- d.ScanEvents(ctx, from, to, 50_000, func(e event.Event) error {
			select {
			case s.ch <- e:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	return s
}

// Next returns the next event, io.EOF after the last, or the scan's error.
func (s *EventSource) Next() (event.Event, error) {
	if e, ok := <-s.ch; ok {
		return e, nil
	}
	if err := <-s.errc; err != nil {
		s.errc <- err // every later call sees it too
		return event.Event{}, err
	}
	s.errc <- nil
	return event.Event{}, io.EOF
}

// Stop ends the scan.
func (s *EventSource) Stop() { s.cancel() }
