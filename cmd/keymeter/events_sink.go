package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

// busEventSink puts events posted to the API (third-party producers) on
// the bus like a verifier's: batched per partition key, with a batch id
// derived from the event ids so that a retried request is stored once.
type busEventSink struct{ pub bus.Publisher }

func (s busEventSink) Accept(ctx context.Context, evs []event.Event) error {
	groups := map[string][]event.Event{}
	var order []string
	for _, e := range evs {
		k := e.PartitionKey()
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], e)
	}
	var acks []bus.PubAck
	for _, k := range order {
		h := sha256.New()
		for _, e := range groups[k] {
			h.Write([]byte(e.ID))
			h.Write([]byte{0})
		}
		id := "api-" + hex.EncodeToString(h.Sum(nil)[:16])
		b := event.Batch{ID: id, Producer: "api", Created: time.Now(), Events: groups[k]}
		a, err := s.pub.Publish(ctx, bus.Message{Key: k, BatchID: id, Source: "api", Data: event.AppendBatch(nil, &b)})
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
