package api

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

func sinkEvents(ids ...string) []event.Event {
	var evs []event.Event
	for i, id := range ids {
		evs = append(evs, event.Event{ID: id, Time: time.Unix(1_700_000_000, 0).UTC(), KeyID: fmt.Sprintf("key_%d", i%2), Status: 200})
	}
	return evs
}

// The batch ids depend only on the event ids, per partition key: a retried
// request gives the same ids, another request other ids.
func TestSinkBatchIDs(t *testing.T) {
	a := sinkBatches(sinkEvents("e1", "e2", "e3"), time.Now())
	b := sinkBatches(sinkEvents("e1", "e2", "e3"), time.Now().Add(time.Hour))
	c := sinkBatches(sinkEvents("e1", "e2", "e4"), time.Now())
	if len(a) != 2 || len(a[0].Events) != 2 || len(a[1].Events) != 1 {
		t.Fatalf("want 2 batches (key_0: 2 events, key_1: 1), got %d", len(a))
	}
	for i := range a {
		if a[i].ID != b[i].ID {
			t.Errorf("batch %d: retry has id %s, first try %s", i, b[i].ID, a[i].ID)
		}
		if k := a[i].Events[0].PartitionKey(); k != fmt.Sprintf("key_%d", i) {
			t.Errorf("batch %d holds key %s", i, k)
		}
	}
	if a[0].ID == c[0].ID {
		t.Errorf("other events, same batch id %s", a[0].ID)
	}
}

// A request posted twice reaches the bus once: the bus drops the second
// copy by batch id.
func TestBusSinkRetryStoredOnce(t *testing.T) {
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 2})
	sink, err := NewBusSink(b.Publisher())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	evs := sinkEvents("r1", "r2", "r3", "r4", "r5")
	for range 2 {
		if err := sink.Accept(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "sinktest"})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close(context.Background())
	seen := map[string]int{}
	var eb event.Batch
	for deliveries := 0; deliveries < 2 && ctx.Err() == nil; {
		ds, err := cons.Fetch(ctx, 10, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			deliveries++
			if err := event.DecodeBatch(d.Data, &eb); err != nil {
				t.Fatal(err)
			}
			for _, e := range eb.Events {
				seen[e.ID]++
			}
		}
		if err := bus.AckLatest(ctx, cons, ds); err != nil {
			t.Fatal(err)
		}
	}
	// A third delivery would be the retry's copy.
	ds, err := cons.Fetch(ctx, 10, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 0 || len(seen) != 5 {
		t.Fatalf("after 2 batches: %d more deliveries, events seen %v", len(ds), seen)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event %s delivered %d times", id, n)
		}
	}
}

func TestNewBusSinkNeedsPublisher(t *testing.T) {
	if _, err := NewBusSink(nil); err == nil {
		t.Fatal("NewBusSink(nil): no error")
	}
}
