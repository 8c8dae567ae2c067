package kafkabus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/ctxtime"
)

// headerTombstone marks a key deletion. The value is null too (what
// compaction needs), but kafka-go reads null and empty values alike.
const headerTombstone = "keymeter-tombstone"

func (b *Bus) write(ctx context.Context, what string, msg kafka.Message) error {
	err := b.sync.WriteMessages(ctx, msg)
	b.links.observe(what, err)
	if err != nil {
		return fmt.Errorf("kafkabus: %s: %w", what, err)
	}
	return nil
}

// DeadLetter appends dl to the dead-letter topic, with its reason and origin
// as headers.
func (b *Bus) DeadLetter(ctx context.Context, dl bus.DeadLetter) error {
	t := dl.Time
	if t.IsZero() {
		t = time.Now()
	}
	return b.write(ctx, "dead-letter", kafka.Message{
		Topic: b.cfg.DeadLetterTopic,
		Key:   []byte(dl.Origin),
		Value: dl.Data,
		Time:  t,
		Headers: []kafka.Header{
			{Key: bus.HeaderReason, Value: []byte(dl.Reason)},
			{Key: bus.HeaderOrigin, Value: []byte(dl.Origin)},
		},
	})
}

// ReadDeadLetters reads up to max dead letters from the start of the log.
// It returns as soon as it has read everything there is, waiting at most
// wait for the first one when the log is empty.
func (b *Bus) ReadDeadLetters(ctx context.Context, max int, wait time.Duration) ([]bus.DeadLetter, error) {
	if max <= 0 {
		return nil, nil
	}
	topic := b.cfg.DeadLetterTopic
	first, _, err := b.offsets(ctx, topic, []int{0})
	if err != nil {
		return nil, err
	}
	r, err := b.partitionReader(topic, 0, first[0])
	if err != nil {
		return nil, err
	}
	defer r.Close()
	rctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var out []bus.DeadLetter
	for len(out) < max {
		m, err := r.ReadMessage(rctx)
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				break
			}
			return out, fmt.Errorf("kafkabus: read dead letters: %w", err)
		}
		out = append(out, bus.DeadLetter{
			Origin: headerValue(m.Headers, bus.HeaderOrigin),
			Reason: headerValue(m.Headers, bus.HeaderReason),
			Data:   m.Value,
			Time:   m.Time,
		})
		if m.Offset+1 >= m.HighWaterMark {
			break
		}
	}
	return out, nil
}

// PutKey sets the state of key id, waiting until the broker stored it.
func (b *Bus) PutKey(ctx context.Context, id string, value []byte) error {
	if id == "" {
		return errors.New("kafkabus: put key: empty id")
	}
	if value == nil {
		value = []byte{} // nil would be written as a tombstone
	}
	return b.write(ctx, "put key", kafka.Message{Topic: b.cfg.KeysTopic, Key: []byte(id), Value: value})
}

// CompareAndSet is nil: a Kafka topic cannot refuse a write because the
// key's latest record changed. Writers fall back to PutKey, and versions in
// the key state make a lost update visible.
func (b *Bus) CompareAndSet() bus.KeyCAS { return nil }

// DeleteKey writes a tombstone for id; compaction removes the key later.
func (b *Bus) DeleteKey(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("kafkabus: delete key: empty id")
	}
	return b.write(ctx, "delete key", kafka.Message{
		Topic:   b.cfg.KeysTopic,
		Key:     []byte(id),
		Headers: []kafka.Header{{Key: headerTombstone, Value: []byte("1")}},
	})
}

// WatchKeys reads every partition of the compacted key topic from its start
// up to the high-water mark taken at the call, sends the latest value of
// each key that exists, then EndOfSnapshot, then every later change.
// Revision is the record's offset + 1 (per partition).
func (b *Bus) WatchKeys(ctx context.Context) (<-chan bus.KeyUpdate, error) {
	topic := b.cfg.KeysTopic
	parts := seq(b.cfg.KeyPartitions)
	first, next, err := b.offsets(ctx, topic, parts)
	if err != nil {
		return nil, err
	}
	in, err := b.readKeyPartitions(ctx, topic, parts, first)
	if err != nil {
		return nil, err
	}
	out := make(chan bus.KeyUpdate, 256)
	go func() {
		defer close(out)
		send := func(u bus.KeyUpdate) bool {
			select {
			case out <- u:
				return true
			case <-ctx.Done():
				return false
			}
		}
		entries, early, ok := b.keySnapshot(ctx, topic, parts, first, next, in)
		if !ok {
			return
		}
		for i := range entries {
			if entries[i].Deleted {
				continue
			}
			if !send(entries[i]) {
				return
			}
			entries[i] = bus.KeyUpdate{} // let the consumer own the only reference
		}
		entries = nil
		if !send(bus.KeyUpdate{EndOfSnapshot: true}) {
			return
		}
		for _, u := range early {
			if !send(u) {
				return
			}
		}
		for m := range in {
			if !send(keyUpdate(m)) {
				return
			}
		}
	}()
	return out, nil
}

// readKeyPartitions reads each partition of the key topic from its first
// offset into one channel, until ctx ends; the channel is closed then.
func (b *Bus) readKeyPartitions(ctx context.Context, topic string, parts []int, first map[int]int64) (<-chan kafka.Message, error) {
	readers := make([]*kafka.Reader, 0, len(parts))
	for _, p := range parts {
		r, err := b.partitionReader(topic, p, first[p])
		if err != nil {
			for _, r := range readers {
				_ = r.Close()
			}
			return nil, err
		}
		readers = append(readers, r)
	}
	in := make(chan kafka.Message, 256)
	var wg sync.WaitGroup
	for _, r := range readers {
		wg.Go(func() {
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					if ctx.Err() != nil || errors.Is(err, io.EOF) {
						return
					}
					b.links.observe("watch keys", err)
					_ = ctxtime.Sleep(ctx, 100*time.Millisecond)
					continue
				}
				select {
				case in <- m:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	go func() { wg.Wait(); close(in) }()
	return in, nil
}

// keySnapshot reads in up to each partition's mark (next) and returns the
// latest value per key in first-seen (log) order, deletions kept as
// markers, and the live changes that arrived meanwhile (early). ok is
// false when ctx ended or in closed first.
func (b *Bus) keySnapshot(ctx context.Context, topic string, parts []int, first, next map[int]int64, in <-chan kafka.Message) (entries, early []bus.KeyUpdate, ok bool) {
	// entries keeps first-seen (log) order, so no sort is needed, and
	// index is sized up front from the offsets: growing a map of a
	// million keys cost more than reading them.
	pending := map[int]int64{} // partition → next offset to see, until its mark
	var records int64
	for _, p := range parts {
		if next[p] > first[p] {
			pending[p] = first[p]
			records += next[p] - first[p]
		}
	}
	size := int(min(records, 1<<22))
	index := make(map[string]int, size)
	entries = make([]bus.KeyUpdate, 0, size)
	// Compaction can remove the records just below a mark (an old
	// tombstone at the end of a partition): then no record ever reaches
	// it, and a probe tells that nothing is left below it.
	probe := time.NewTicker(500 * time.Millisecond)
	defer probe.Stop()
	for len(pending) > 0 {
		var m kafka.Message
		select {
		case <-ctx.Done():
			return nil, nil, false
		case <-probe.C:
			for p, at := range pending {
				if b.nothingBelow(ctx, topic, p, at, next[p]) {
					delete(pending, p)
				}
			}
			continue
		case msg, open := <-in:
			if !open {
				return nil, nil, false
			}
			m = msg
		}
		u := keyUpdate(m)
		mark := next[m.Partition]
		if m.Offset >= mark {
			early = append(early, u)
			delete(pending, m.Partition)
			continue
		}
		if i, seen := index[u.ID]; seen {
			entries[i] = u // a deletion stays as a marker, skipped by the caller
		} else if !u.Deleted {
			index[u.ID] = len(entries)
			entries = append(entries, u)
		}
		if m.Offset+1 >= mark {
			delete(pending, m.Partition)
		} else if _, waiting := pending[m.Partition]; waiting {
			pending[m.Partition] = m.Offset + 1
		}
	}
	return entries, early, true
}

// nothingBelow reports whether partition p of topic holds no record in
// [from, mark): a fetch at from returns the first record at or after it.
func (b *Bus) nothingBelow(ctx context.Context, topic string, p int, from, mark int64) bool {
	res, err := b.client.Fetch(ctx, &kafka.FetchRequest{
		Topic: topic, Partition: p, Offset: from,
		MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 50 * time.Millisecond,
	})
	if err != nil || res.Error != nil {
		return false
	}
	for {
		r, err := res.Records.ReadRecord()
		if err != nil {
			// No record at or after from: everything below mark is gone.
			return errors.Is(err, io.EOF) && res.HighWatermark >= mark
		}
		if r.Offset >= from {
			return r.Offset >= mark
		}
	}
}

func keyUpdate(m kafka.Message) bus.KeyUpdate {
	u := bus.KeyUpdate{ID: string(m.Key), Revision: uint64(m.Offset) + 1}
	if headerValue(m.Headers, headerTombstone) != "" {
		u.Deleted = true
		return u
	}
	// A null value from another producer (without our header) reads as
	// empty: kafka-go does not tell null from empty.
	u.Value = m.Value
	if u.Value == nil {
		u.Value = []byte{}
	}
	return u
}

// PublishDecision appends a decision, partitioned by key.
func (b *Bus) PublishDecision(ctx context.Context, key string, data []byte) error {
	if data == nil {
		data = []byte{}
	}
	return b.write(ctx, "publish decision", kafka.Message{Topic: b.cfg.DecisionsTopic, Key: []byte(key), Value: data})
}

// SubscribeDecisions calls fn, one call at a time, for every decision
// published after it returns, until ctx ends.
func (b *Bus) SubscribeDecisions(ctx context.Context, fn func(data []byte)) error {
	parts := seq(b.cfg.DecisionPartitions)
	// Start from the marks taken now, not the reader's lazily resolved
	// "latest", so a decision published right after the call is seen.
	_, next, err := b.offsets(ctx, b.cfg.DecisionsTopic, parts)
	if err != nil {
		return err
	}
	return b.followDecisions(ctx, next, fn, nil)
}

// SubscribeDecisionsSince replays the decisions published since a time,
// then follows new ones.
func (b *Bus) SubscribeDecisionsSince(ctx context.Context, since time.Time, fn func([]byte)) error {
	_, err := b.SubscribeDecisionsSinceSynced(ctx, since, fn)
	return err
}

// SubscribeDecisionsSinceSynced is SubscribeDecisionsSince that also
// returns a channel closed once the decisions published before the call
// have all been passed to fn (at once when there are none), so that a
// detector applies the rule-mode overrides before it fetches events.
func (b *Bus) SubscribeDecisionsSinceSynced(ctx context.Context, since time.Time, fn func([]byte)) (<-chan struct{}, error) {
	topic := b.cfg.DecisionsTopic
	parts := seq(b.cfg.DecisionPartitions)
	_, next, err := b.offsets(ctx, topic, parts)
	if err != nil {
		return nil, err
	}
	reqs := make([]kafka.OffsetRequest, 0, len(parts))
	for _, p := range parts {
		reqs = append(reqs, kafka.TimeOffsetOf(p, since))
	}
	res, err := b.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("kafkabus: decisions since %s: %w", since.Format(time.RFC3339), err)
	}
	start := map[int]int64{}
	for _, p := range parts {
		start[p] = next[p] // nothing since then: follow from the end
	}
	for _, po := range res.Topics[topic] {
		for off := range po.Offsets {
			if off >= 0 && off < start[po.Partition] {
				start[po.Partition] = off
			}
		}
	}
	caughtUp := make(chan struct{})
	left := map[int]bool{} // partitions with stored decisions still to replay
	for p, off := range start {
		if off < next[p] {
			left[p] = true
		}
	}
	if len(left) == 0 {
		close(caughtUp)
	}
	reached := func(p int, off int64) { // under followDecisions' lock
		if left[p] && off+1 >= next[p] {
			delete(left, p)
			if len(left) == 0 {
				close(caughtUp)
			}
		}
	}
	return caughtUp, b.followDecisions(ctx, start, fn, reached)
}

// followDecisions calls fn for every decision of each partition from its
// start offset on and, if set, reached with the message's partition and
// offset (one call at a time).
func (b *Bus) followDecisions(ctx context.Context, start map[int]int64, fn func([]byte), reached func(p int, off int64)) error {
	var mu sync.Mutex
	for p, off := range start {
		r, err := b.partitionReader(b.cfg.DecisionsTopic, p, off)
		if err != nil {
			return err
		}
		go func() {
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					if ctx.Err() != nil || errors.Is(err, io.EOF) {
						return
					}
					b.links.observe("subscribe decisions", err)
					_ = ctxtime.Sleep(ctx, 100*time.Millisecond)
					continue
				}
				mu.Lock()
				fn(m.Value)
				if reached != nil {
					reached(m.Partition, m.Offset)
				}
				mu.Unlock()
			}
		}()
	}
	return nil
}
