package aggregator

import (
	"context"
	"errors"
	"fmt"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// Events stored once although their batch arrives again.
//
// The cheap checks (the bus's duplicate window, batch ids within a block and
// in the recent set of this process) cannot see a batch published again
// after a restart of this aggregator, by another member, or long after the
// windows: a verifier's crash recovery or spool replay (marked Resent by
// its producer), a Kafka producer's retry across an aggregator restart (not
// marked), and a replayed intent's range, which may hold a batch the live
// flush had dropped. For those, the events are looked up in the store by
// id, one query per flush or replayed insert (store.EventIDChecker), and
// the ones found are dropped:
//
//   - every event of a delivery marked Resent;
//   - every event of the first block of each partition after the
//     aggregator starts or enters a consumer group generation (a takeover
//     or a rebalance);
//   - every event of a replayed intent's range.
//
// Ordinary live deliveries are not looked up (no store query on the hot
// path). When a flush looks anything up, it also drops a second copy of an
// event id within its insert (a batch and its resend arriving close
// together, neither stored yet).
//
// Why a replay then stores each event once. Within one insert the events
// go in first as the per-minute rollup (token T/1m) and then as raw rows
// (token T): the store writes the rollup first (DB.InsertEvents), so raw
// rows stored under T mean the rollup under T is stored too. A pending
// intent replays its range, drops the events already stored (the set K
// remains), and inserts K under the intent's token T:
//
//   - T's raw insert happened (live, or an earlier replay): all of its
//     events are stored, so every event of the range is (a copy the live
//     flush dropped was dropped because it was stored or held earlier),
//     K is empty: nothing is inserted and the intent is cleared; the
//     rollup went in before the raw rows.
//   - T's raw insert did not happen: K is what the live flush would have
//     stored (minus anything stored meanwhile), inserted under T. If only
//     the rollup went in, its repeat under T/1m is dropped by its token and
//     the raw rows go in; else both go in.
//
// A block made empty by the check is no insert at all; its intent is
// recorded and cleared as usual, and a replay finds it empty again. Fencing
// is unchanged: the check runs before the intents are recorded (live) or
// before the replayed insert, and only the owner of a partition's
// generation replays it. Inserts are assumed atomic per shard (one block of
// at most max_insert_block_size rows).
type storedCheck struct {
	// spans are [from, to) ranges of an evBuf's events to look up.
	spans [][2]int
}

// resetFirstBlocks makes the next block of every partition a checked one
// (at start, and on entering a consumer group generation).
func (a *Aggregator) resetFirstBlocks() {
	a.firstDone = map[int]bool{}
}

// markChecked marks the events d added to b (from index from of b's
// buffer on) for a store lookup at flush, when d is resent or b is the
// first block of its partition since the partition was acquired.
func (a *Aggregator) markChecked(b *block, d bus.Delivery, from int) {
	if b.first == d.Position && !a.firstDone[d.Partition] {
		a.firstDone[d.Partition] = true
		b.checkAll = true
	}
	if (d.Resent || b.checkAll) && len(b.buf.events) > from {
		c := &b.buf.check
		if n := len(c.spans); n > 0 && c.spans[n-1][1] == from {
			c.spans[n-1][1] = len(b.buf.events) // adjacent: one span (dropStored then looks up the events in place)
		} else {
			c.spans = append(c.spans, [2]int{from, len(b.buf.events)})
		}
	}
}

// dropStored removes from bufs the events the store holds already: all of
// them (all, a replay) or those marked by markChecked, with one query; and,
// when there was anything to look up, an event whose id came earlier in
// bufs. It returns how many it dropped. Without an EventIDChecker store it
// does nothing.
func (a *Aggregator) dropStored(ctx context.Context, bufs []*evBuf, all bool) (int, error) {
	c, ok := a.store.(store.EventIDChecker)
	if !ok {
		return 0, nil
	}
	probe := probeOf(bufs, all)
	if len(probe) == 0 {
		return 0, nil
	}
	var stored map[string]struct{}
	if err := a.retry(ctx, "look up stored events", func() error {
		var err error
		stored, err = c.StoredEventIDs(ctx, probe)
		return err
	}); err != nil {
		return 0, err
	}
	dropped := 0
	seen := make(map[string]struct{}, len(probe))
	for _, b := range bufs {
		dropped += b.dropStored(stored, seen, all)
	}
	if dropped > 0 {
		a.count(func(s *Stats) { s.StoredDuplicates += uint64(dropped) })
		a.m.storedDuplicates.Add(float64(dropped))
		a.log.Info("aggregator: dropped events stored already (resent, replayed or first block)", "events", dropped, "looked_up", len(probe))
	}
	return dropped, nil
}

// probeOf is the events of bufs to look up: all of them, or those marked.
// One buf with one span (a shared buf of first blocks: markChecked joins
// adjacent spans) is looked up in place, without copying its events
// (profiled: the copy was ~6% of the pipeline's allocation).
func probeOf(bufs []*evBuf, all bool) []event.Event {
	if len(bufs) == 1 {
		if all {
			return bufs[0].events
		}
		if sp := bufs[0].check.spans; len(sp) == 1 {
			return bufs[0].events[sp[0][0]:sp[0][1]]
		}
	}
	var probe []event.Event
	for _, b := range bufs {
		if all {
			probe = append(probe, b.events...)
			continue
		}
		for _, s := range b.check.spans {
			probe = append(probe, b.events[s[0]:s[1]]...)
		}
	}
	return probe
}

// dropStored keeps, in order, the events of b not in stored (all, or
// those marked) and not in seen, adding the ids kept to seen.
func (b *evBuf) dropStored(stored, seen map[string]struct{}, all bool) int {
	spans := b.check.spans
	b.check.spans = nil
	n, span := 0, 0
	for i := range b.events {
		for span < len(spans) && i >= spans[span][1] {
			span++
		}
		marked := all || (span < len(spans) && i >= spans[span][0])
		id := b.events[i].ID
		_, isStored := stored[id]
		_, isSeen := seen[id]
		if isSeen || (marked && isStored) {
			continue
		}
		seen[id] = struct{}{}
		if i != n {
			b.events[n] = b.events[i]
		}
		n++
	}
	clear(b.events[n:])
	dropped := len(b.events) - n
	b.events = b.events[:n]
	return dropped
}

// checkNeeded reports whether any of bufs has events marked for a lookup.
func checkNeeded(bufs []*evBuf) bool {
	for _, b := range bufs {
		if len(b.check.spans) > 0 {
			return true
		}
	}
	return false
}

// insertFenced runs the insert fn of a flush made in generation epoch,
// retrying; before each retry after a failure it reads the fence, and
// stops with errFenced once a newer generation has begun: that member
// replays the intent (it was recorded before this member read the fence
// the first time, so the new one, which fenced before reading the
// intents, sees it), and this one no longer inserts a partition it lost.
func (a *Aggregator) insertFenced(ctx context.Context, epoch uint64, fn func() error) error {
	tried := false
	return a.retry(ctx, "insert", func() error {
		if tried && epoch > 0 && a.fencer != nil {
			if fence, err := a.fencer.MaxFence(ctx, a.cfg.Group); err == nil && fence > epoch {
				return fmt.Errorf("%w: generation %d began while insert of generation %d was retried", errFenced, fence, epoch)
			}
		}
		tried = true
		return fn()
	})
}

// permanent reports errors retry gives up on at once.
func permanent(err error) bool { return errors.Is(err, errFenced) }
