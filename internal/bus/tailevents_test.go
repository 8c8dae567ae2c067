package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

// TailEvents hands over the events of every batch in order and skips a
// delivery that is not a batch.
func TestTailEventsSkipsUndecodable(t *testing.T) {
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "tailev"})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close(context.Background())
	good := event.Batch{Events: []event.Event{{KeyID: "key_a"}, {KeyID: "key_b"}}}
	for i, data := range [][]byte{[]byte("not a batch"), event.AppendBatch(nil, &good)} {
		a, err := b.Publisher().Publish(ctx, bus.Message{Key: "k", BatchID: "tailev-" + string(rune('0'+i)), Source: "test", Data: data})
		if err != nil {
			t.Fatal(err)
		}
		<-a.Done()
		if err := a.Err(); err != nil {
			t.Fatal(err)
		}
	}
	tctx, stop := context.WithCancel(ctx)
	var got []string
	err = bus.TailEvents(tctx, cons, func(e *event.Event) {
		if got = append(got, e.KeyID); len(got) == 2 {
			stop()
		}
	})
	if err != nil || len(got) != 2 || got[0] != "key_a" || got[1] != "key_b" {
		t.Fatalf("tail: %v, events %q", err, got)
	}
}
