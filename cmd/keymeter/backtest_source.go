package main

import (
	"context"
	"time"

	"github.com/keymeter/keymeter/internal/store"
)

// storeSource feeds a backtest with stored events, oldest first.
type storeSource struct{ *store.EventSource }

func newStoreSource(ctx context.Context, st *store.DB, from, to time.Time) storeSource {
	return storeSource{st.Events(ctx, from, to)}
}

func (s storeSource) stop() { s.Stop() }
