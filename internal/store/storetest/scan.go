package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// historyScanner is implemented by store.DB: the backtest's read of stored
// history.
type historyScanner interface {
	ScanEvents(ctx context.Context, from, to time.Time, sliceRows int, fn func(event.Event) error) error
	ScanEventBatches(ctx context.Context, from, to time.Time, sliceRows int, fn func([]event.Event) error) error
}

// testScanEvents: every event of [from, to) exactly once, ordered by time
// then event ID, all fields intact, however the range is cut into slices;
// across a day (partition) boundary, with ties on the millisecond, events on
// both ends of the range and hostile strings.
func testScanEvents(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	sc, ok := s.(historyScanner)
	if !ok {
		t.Skipf("%T has no history scan", s)
	}
	c := ctx(t)
	from := base.Add(-90 * time.Minute)
	to := base.Add(90 * time.Minute)
	evs := Events("s", 3000, from, 3*time.Hour, 40)
	// Ties: 30 events on one millisecond, IDs inserted out of order.
	tie := base.Add(17*time.Minute + 123*time.Millisecond)
	for i := range 30 {
		e := evs[i]
		e.ID, e.Time = fmt.Sprintf("tie-%02d", (i*7)%30), tie
		evs = append(evs, e)
	}
	hostile := "x'); DROP TABLE requests; --\n\nSELECT 1\t\\ \x00 é"
	for i := 0; i < len(evs); i += 97 {
		evs[i].UserAgent, evs[i].Route, evs[i].KeyID = hostile, "/a\n\t/b\\", ""
	}
	// The ends: from is in, to and anything before from are out.
	edge := evs[0]
	for _, x := range []struct {
		id string
		t  time.Time
	}{{"edge-from", from}, {"edge-last", to.Add(-time.Millisecond)}, {"edge-to", to}, {"edge-before", from.Add(-time.Millisecond)}} {
		e := edge
		e.ID, e.Time = x.id, x.t
		evs = append(evs, e)
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
	for i := 0; i < len(evs); i += 700 {
		insert(t, s, fmt.Sprintf("scan-%d", i), evs[i:min(i+700, len(evs))])
	}
	var want []event.Event
	for _, e := range evs {
		if !e.Time.Before(from) && e.Time.Before(to) {
			want = append(want, norm(e))
		}
	}
	sort.Slice(want, func(i, j int) bool {
		if !want[i].Time.Equal(want[j].Time) {
			return want[i].Time.Before(want[j].Time)
		}
		return want[i].ID < want[j].ID
	})
	for _, slice := range []int{0, 1, 7, 500} {
		var got []event.Event
		batches := 0
		err := sc.ScanEventBatches(c, from, to, slice, func(b []event.Event) error {
			batches++
			if len(b) == 0 {
				return errors.New("empty batch")
			}
			for _, e := range b {
				got = append(got, norm(e))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("slice %d: %v", slice, err)
		}
		if len(got) != len(want) {
			t.Fatalf("slice %d: %d events, want %d", slice, len(got), len(want))
		}
		for i := range got {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Fatalf("slice %d: event %d (of %d batches)\n got %+v\nwant %+v", slice, i, batches, got[i], want[i])
			}
		}
		if slice == 7 && batches < 100 {
			t.Fatalf("slice 7: %d batches; the range was not cut", batches)
		}
	}
	// ScanEvents gives the same, one by one; an error from fn stops it.
	n := 0
	stop := errors.New("stop")
	err := sc.ScanEvents(c, from, to, 50, func(e event.Event) error {
		if !reflect.DeepEqual(norm(e), want[n]) {
			return fmt.Errorf("event %d: %+v, want %+v", n, e, want[n])
		}
		n++
		if n == 1000 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 1000 {
		t.Fatalf("ScanEvents stopped with %v after %d events", err, n)
	}
	if err := sc.ScanEvents(c, to, from, 0, func(event.Event) error { return nil }); !errors.Is(err, store.ErrInvalidQuery) {
		t.Fatalf("from after to: %v", err)
	}
}

// norm puts an event's time in the form the store returns.
func norm(e event.Event) event.Event {
	e.Time = time.UnixMilli(e.Time.UnixMilli()).UTC()
	return e
}
