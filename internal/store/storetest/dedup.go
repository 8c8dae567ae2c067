package storetest

import (
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// The lookup is checked on the stores of testExactlyOnce and
// testHostileStrings rather than on a database of its own: one more fresh
// database with an insert made chDB's exit hang under -race (libchdb's
// shutdown; seen with any extra inserting test, also on the code before).

// checkStoredEventIDs: among a mix of stored events (half of stored) and
// new ones in the same time range and keys, the lookup finds exactly the
// stored ids; a stored id at another time (not the same event) is not found.
func checkStoredEventIDs(t *testing.T, s store.Store, stored []event.Event) {
	t.Helper()
	c, ok := s.(store.EventIDChecker)
	if !ok {
		t.Fatalf("%T does not implement store.EventIDChecker", s)
	}
	half := len(stored) / 2
	probe := append([]event.Event{}, stored[half:]...)
	fresh := Events("new", 100, stored[0].Time, time.Hour, 5)
	fresh[0].ID = "it's a \\ 'quote'\t"
	fresh[1].ID = "line\nbreak"
	probe = append(probe, fresh...)
	got, err := c.StoredEventIDs(ctx(t), probe)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(stored)-half {
		t.Fatalf("found %d stored ids, want %d", len(got), len(stored)-half)
	}
	for _, e := range stored[half:] {
		if _, ok := got[e.ID]; !ok {
			t.Fatalf("stored id %s not found", e.ID)
		}
	}
	moved := stored[0]
	moved.Time = moved.Time.Add(48 * time.Hour)
	if got, err := c.StoredEventIDs(ctx(t), []event.Event{moved}); err != nil || len(got) != 0 {
		t.Fatalf("moved event: %v, %v; want none", got, err)
	}
	if got, err := c.StoredEventIDs(ctx(t), nil); err != nil || len(got) != 0 {
		t.Fatalf("no events: %v, %v", got, err)
	}
	last := stored[len(stored)-1:]
	if got, err := c.StoredEventIDs(ctx(t), last); err != nil || len(got) != 1 {
		t.Fatalf("last event (at the range's end): %v, %v; want %s", got, err, last[0].ID)
	}
}
