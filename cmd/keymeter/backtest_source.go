package main

import (
	"context"
	"io"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// storeSource feeds a backtest with stored events, oldest first.
type storeSource struct {
	ch     chan event.Event
	errc   chan error
	cancel context.CancelFunc
}

func newStoreSource(ctx context.Context, st *store.DB, from, to time.Time) *storeSource {
	ctx, cancel := context.WithCancel(ctx)
	s := &storeSource{ch: make(chan event.Event, 4096), errc: make(chan error, 1), cancel: cancel}
	go func() {
		defer close(s.ch)
		s.errc <- st.ScanEvents(ctx, from, to, 50_000, func(e event.Event) error {
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

// Next implements detect.EventSource.
func (s *storeSource) Next() (event.Event, error) {
	if e, ok := <-s.ch; ok {
		return e, nil
	}
	if err := <-s.errc; err != nil {
		return event.Event{}, err
	}
	return event.Event{}, io.EOF
}

func (s *storeSource) stop() { s.cancel() }
