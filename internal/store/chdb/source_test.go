package chdb_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// The backtest's source yields the stored events of the range oldest
// first, then io.EOF; a bad range is the scan's error.
func TestEventSourceOldestFirst(t *testing.T) {
	db := open(t, "event_source")
	defer db.Close(context.Background())
	ctx := context.Background()
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	var evs []event.Event
	for i := 4; i >= 0; i-- { // inserted newest first
		evs = append(evs, event.Event{ID: fmt.Sprintf("src-%d", i), Time: t0.Add(time.Duration(i) * time.Minute), KeyID: "key_src", Project: "p", Status: 200})
	}
	if err := db.InsertEvents(ctx, "source-test", evs); err != nil {
		t.Fatal(err)
	}
	src := db.Events(ctx, t0, t0.Add(4*time.Minute)) // the last one is outside
	defer src.Stop()
	for i := 0; i < 4; i++ {
		e, err := src.Next()
		if err != nil || e.ID != fmt.Sprintf("src-%d", i) {
			t.Fatalf("event %d: %s %v", i, e.ID, err)
		}
	}
	if _, err := src.Next(); err != io.EOF {
		t.Fatalf("after the last: %v", err)
	}
	bad := db.Events(ctx, t0, t0)
	for range 2 {
		if _, err := bad.Next(); !errors.Is(err, store.ErrInvalidQuery) {
			t.Fatalf("empty range: %v", err)
		}
	}
}
