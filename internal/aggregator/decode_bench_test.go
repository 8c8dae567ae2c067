package aggregator

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

// BenchmarkDecodeIntoBlock is the consuming side of the hot path: bus
// messages of 1000 events decoded into a 100k-event block (validation,
// batch-id dedup, the buffer recycled between blocks, as in a flush).
//
//	go test -run '^$' -bench DecodeIntoBlock -benchmem ./internal/aggregator/
func BenchmarkDecodeIntoBlock(b *testing.B) {
	const perMsg, msgs = 1000, 100
	now := time.Now().UTC()
	ds := make([]bus.Delivery, msgs)
	for m := range ds {
		eb := event.Batch{ID: fmt.Sprintf("b%d", m), Producer: "bench", Created: now}
		for i := range perMsg {
			eb.Events = append(eb.Events, event.Event{ID: fmt.Sprintf("e%d-%d", m, i), Time: now, Project: "proj_bench",
				KeyID: fmt.Sprintf("key_%03d", m%50), Outcome: event.OutcomeValid, ClientIP: "203.0.113.9", Country: "DE",
				Method: "GET", Host: "api.example.com", Route: "/v1/items", Status: 200, LatencyUS: 800, UserAgent: "bench/1", VerifierID: "v1"})
		}
		ds[m] = bus.Delivery{Partition: m % 8, BatchID: eb.ID, Data: event.AppendBatch(nil, &eb)}
	}
	a := &Aggregator{cfg: Config{}.withDefaults(), m: newMetrics(), recent: newRecent(200_000), floor: map[int]uint64{}}
	a.bufs.limit = 2 * msgs * perMsg
	ctx := context.Background()
	var eb event.Batch
	events := 0
	for b.Loop() {
		blk := &block{buf: &evBuf{events: a.bufs.get(max(1024, a.blockHint))}}
		for m := range ds {
			ds[m].Position++
			events += a.decode(ctx, ds[m], &eb, blk, false) // not live: the same batch ids come again
		}
		a.blockHint = len(blk.buf.events)
		a.bufs.put(blk.buf.events)
	}
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(events)/float64(b.N), "events/op")
}
