package natsbus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymeter/keymeter/internal/bus"
)

// ---- key-state log: a JetStream KV bucket ----

// leaderless reports an error that means no server took the request: the
// stream (or bucket) has no leader for a moment, as while a cluster elects a
// new one after a node died. Nothing was written, so trying again is safe
// even for a compare-and-set.
func leaderless(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// electionWait bounds how long a write waits for a new leader (a JetStream
// cluster elects one within seconds of losing a node).
const electionWait = 20 * time.Second

// writeTimeout bounds one write when ctx has no deadline: a server that
// died after taking the request never answers it.
const writeTimeout = 10 * time.Second

// untilLed runs write, again while it fails for want of a leader, within
// electionWait and ctx.
func untilLed(ctx context.Context, write func(ctx context.Context) error) error {
	deadline := time.Now().Add(electionWait)
	wait := 50 * time.Millisecond
	for {
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if _, ok := ctx.Deadline(); !ok {
			wctx, cancel = context.WithTimeout(ctx, writeTimeout)
		}
		err := write(wctx)
		cancel()
		if err == nil || !leaderless(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// PutKey stores the latest state of a key.
func (b *Bus) PutKey(ctx context.Context, id string, value []byte) error {
	if err := untilLed(ctx, func(ctx context.Context) error { _, err := b.kv.Put(ctx, id, value); return err }); err != nil {
		return fmt.Errorf("natsbus: put key %s: %w", id, err)
	}
	return nil
}

// PutKeyIf writes the key only over revision rev (compare-and-set).
func (b *Bus) PutKeyIf(ctx context.Context, id string, value []byte, rev uint64) error {
	err := untilLed(ctx, func(ctx context.Context) (err error) {
		if rev == 0 {
			_, err = b.kv.Create(ctx, id, value)
		} else {
			_, err = b.kv.Update(ctx, id, value, rev)
		}
		return err
	})
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.Is(err, jetstream.ErrKeyExists) || (errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence) {
			return fmt.Errorf("natsbus: put key %s at revision %d: %w", id, rev, bus.ErrRevisionMismatch)
		}
		return fmt.Errorf("natsbus: put key %s: %w", id, err)
	}
	return nil
}

var _ bus.KeyCAS = (*Bus)(nil)

// CompareAndSet is the bus itself: the KV bucket compares revisions.
func (b *Bus) CompareAndSet() bus.KeyCAS { return b }

// DeleteKey removes a key from the log (watchers see a deletion).
func (b *Bus) DeleteKey(ctx context.Context, id string) error {
	if err := untilLed(ctx, func(ctx context.Context) error { return b.kv.Delete(ctx, id) }); err != nil {
		return fmt.Errorf("natsbus: delete key %s: %w", id, err)
	}
	return nil
}

// WatchKeys delivers every key's latest state, an EndOfSnapshot marker,
// then live changes until ctx ends.
//
// After a reconnect the channel is closed (the watch ends): a server that
// restarted may have lost the watch's consumer, and a new watch with a
// fresh snapshot is the fast and certain way back.
func (b *Bus) WatchKeys(ctx context.Context) (<-chan bus.KeyUpdate, error) {
	reconnected := b.reconnects()
	w, err := b.kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("natsbus: watch keys: %w", err)
	}
	out := make(chan bus.KeyUpdate, 1024)
	go func() {
		defer close(out)
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case <-reconnected:
				b.log.Info("nats: key watch ends after a reconnect; watch again for a fresh snapshot")
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				var u bus.KeyUpdate
				if e == nil {
					u.EndOfSnapshot = true
				} else {
					u = bus.KeyUpdate{ID: e.Key(), Revision: e.Revision()}
					if e.Operation() == jetstream.KeyValueDelete || e.Operation() == jetstream.KeyValuePurge {
						u.Deleted = true
					} else {
						u.Value = e.Value()
					}
				}
				select {
				case out <- u:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// ---- decisions ----

// PublishDecision stores a decision on the decisions stream.
func (b *Bus) PublishDecision(ctx context.Context, key string, data []byte) error {
	msg := nats.NewMsg(b.subj.decisions)
	msg.Data = data
	msg.Header.Set("keymeter-key", key)
	if err := untilLed(ctx, func(ctx context.Context) error { _, err := b.js.PublishMsg(ctx, msg); return err }); err != nil {
		return fmt.Errorf("natsbus: publish decision: %w", err)
	}
	return nil
}

// SubscribeDecisions calls fn for every decision published from now on.
func (b *Bus) SubscribeDecisions(ctx context.Context, fn func([]byte)) error {
	oc, err := b.js.OrderedConsumer(ctx, b.streams.decisions, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("natsbus: subscribe decisions: %w", err)
	}
	cc, err := oc.Consume(func(m jetstream.Msg) { fn(m.Data()) })
	if err != nil {
		return fmt.Errorf("natsbus: subscribe decisions: %w", err)
	}
	context.AfterFunc(ctx, cc.Stop)
	return nil
}

// SubscribeDecisionsSince replays the decisions stored since a time, then
// follows new ones.
func (b *Bus) SubscribeDecisionsSince(ctx context.Context, since time.Time, fn func([]byte)) error {
	oc, err := b.js.OrderedConsumer(ctx, b.streams.decisions, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since,
	})
	if err != nil {
		return fmt.Errorf("natsbus: subscribe decisions: %w", err)
	}
	cc, err := oc.Consume(func(m jetstream.Msg) { fn(m.Data()) })
	if err != nil {
		return fmt.Errorf("natsbus: subscribe decisions: %w", err)
	}
	context.AfterFunc(ctx, cc.Stop)
	return nil
}

// SubscribeDecisionsSinceSynced is SubscribeDecisionsSince that also
// returns a channel closed once the decisions stored when it was called
// have all been passed to fn (at once when there are none), so that a
// detector applies the rule-mode overrides before it fetches events.
func (b *Bus) SubscribeDecisionsSinceSynced(ctx context.Context, since time.Time, fn func([]byte)) (<-chan struct{}, error) {
	oc, err := b.js.OrderedConsumer(ctx, b.streams.decisions, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since,
	})
	if err != nil {
		return nil, fmt.Errorf("natsbus: subscribe decisions: %w", err)
	}
	caughtUp := make(chan struct{})
	var once sync.Once
	done := func() { once.Do(func() { close(caughtUp) }) }
	cc, err := oc.Consume(func(m jetstream.Msg) {
		fn(m.Data())
		if md, err := m.Metadata(); err == nil && md.NumPending == 0 {
			done()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("natsbus: subscribe decisions: %w", err)
	}
	if info := oc.CachedInfo(); info != nil && info.NumPending == 0 {
		done() // nothing stored since then
	}
	context.AfterFunc(ctx, cc.Stop)
	return caughtUp, nil
}

// ---- dead letters ----

// DeadLetter stores a message that could not be processed, with the reason.
func (b *Bus) DeadLetter(ctx context.Context, dl bus.DeadLetter) error {
	if dl.Reason == "" {
		return errors.New("natsbus: dead letter without a reason")
	}
	msg := nats.NewMsg(b.subj.deadletter)
	msg.Data = dl.Data
	msg.Header.Set(bus.HeaderReason, dl.Reason)
	msg.Header.Set(bus.HeaderOrigin, dl.Origin)
	if _, err := b.js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("natsbus: dead letter: %w", err)
	}
	return nil
}

// ReadDeadLetters reads dead letters from the start of the log.
func (b *Bus) ReadDeadLetters(ctx context.Context, max int, wait time.Duration) ([]bus.DeadLetter, error) {
	oc, err := b.js.OrderedConsumer(ctx, b.streams.deadletter, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("natsbus: read dead letters: %w", err)
	}
	batch, err := oc.Fetch(max, jetstream.FetchMaxWait(wait))
	if err != nil {
		return nil, fmt.Errorf("natsbus: read dead letters: %w", err)
	}
	var out []bus.DeadLetter
	for m := range batch.Messages() {
		md, _ := m.Metadata()
		dl := bus.DeadLetter{Reason: m.Headers().Get(bus.HeaderReason), Origin: m.Headers().Get(bus.HeaderOrigin), Data: m.Data()}
		if md != nil {
			dl.Time = md.Timestamp
		}
		out = append(out, dl)
	}
	return out, nil
}
