package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

// BusSink is the EventSink that puts events posted to the API (third-party
// producers) on the bus like a verifier's: batched per partition key, with
// a batch id derived from the event ids, so that a retried request carries
// the same batch ids and the aggregator stores its events once.
type BusSink struct{ pub bus.Publisher }

// NewBusSink returns a sink publishing with pub.
func NewBusSink(pub bus.Publisher) (*BusSink, error) {
	if pub == nil {
		return nil, errors.New("api: event sink needs a publisher")
	}
	return &BusSink{pub: pub}, nil
}

// Accept publishes evs and waits until the bus has them.
func (s *BusSink) Accept(ctx context.Context, evs []event.Event) error {
	var acks []bus.PubAck
	for _, b := range sinkBatches(evs, time.Now()) {
		k := b.Events[0].PartitionKey()
		a, err := s.pub.Publish(ctx, bus.Message{Key: k, BatchID: b.ID, Source: "api", Data: event.AppendBatch(nil, &b)})
		if err != nil {
			return fmt.Errorf("events: %w", err)
		}
		acks = append(acks, a)
	}
	for _, a := range acks {
		select {
		case <-a.Done():
			if err := a.Err(); err != nil {
				return fmt.Errorf("events: %w", err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// sinkBatches groups evs by partition key, in order of first appearance,
// into batches whose id is a hash of their event ids: the same events give
// the same ids.
func sinkBatches(evs []event.Event, now time.Time) []event.Batch {
	groups := map[string][]event.Event{}
	var order []string
	for _, e := range evs {
		k := e.PartitionKey()
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], e)
	}
	out := make([]event.Batch, 0, len(order))
	for _, k := range order {
		h := sha256.New()
		for _, e := range groups[k] {
			h.Write([]byte(e.ID))
			h.Write([]byte{0})
		}
		id := "api-" + hex.EncodeToString(h.Sum(nil)[:16])
		out = append(out, event.Batch{ID: id, Producer: "api", Created: now, Events: groups[k]})
	}
	return out
}
