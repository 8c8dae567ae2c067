package storetest

import (
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// testStoredEventIDs: the lookup finds exactly the stored ids among a mix of
// stored and new events, over several keys and a time range, and nothing
// for events whose time is outside what was stored.
func testStoredEventIDs(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	c, ok := s.(store.EventIDChecker)
	if !ok {
		t.Fatalf("%T does not implement store.EventIDChecker", s)
	}
	stored := Events("st", 500, base, time.Hour, 7)
	stored[260].ID = "line\nbreak"
	stored[261].ID = "tab\tand \\ 'quote'"
	insert(t, s, "dedup-a", stored)
	// Half of them again (as a resent batch would carry them), and new ones
	// in the same time range and keys, with hostile ids.
	probe := append([]event.Event{}, stored[250:]...)
	fresh := Events("new", 100, base, time.Hour, 7)
	fresh[0].ID = "it's a \\ 'quote'\t"
	probe = append(probe, fresh...)
	got, err := c.StoredEventIDs(ctx(t), probe)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 250 {
		t.Fatalf("found %d stored ids, want 250", len(got))
	}
	for _, e := range stored[250:] {
		if _, ok := got[e.ID]; !ok {
			t.Fatalf("stored id %s not found", e.ID)
		}
	}
	// A stored id with another time (not the same event) is not found:
	// the lookup reads only the events' time range.
	moved := stored[0]
	moved.Time = moved.Time.Add(48 * time.Hour)
	if got, err := c.StoredEventIDs(ctx(t), []event.Event{moved}); err != nil || len(got) != 0 {
		t.Fatalf("moved event: %v, %v; want none", got, err)
	}
	if got, err := c.StoredEventIDs(ctx(t), nil); err != nil || len(got) != 0 {
		t.Fatalf("no events: %v, %v", got, err)
	}
	one := stored[499:]
	if got, err := c.StoredEventIDs(ctx(t), one); err != nil || len(got) != 1 {
		t.Fatalf("last event (at the range's end): %v, %v; want %s", got, err, one[0].ID)
	}
}
