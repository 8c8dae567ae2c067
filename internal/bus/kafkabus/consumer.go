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
)

var _ bus.Consumer = (*Consumer)(nil)

// Consumer is one member of a consumer group on the events topic. The group
// assigns it partitions; Ack commits the group's offset.
type Consumer struct {
	b      *Bus
	r      *kafka.Reader
	group  string
	msgs   chan kafka.Message
	cancel context.CancelFunc
	done   chan struct{}

	mu            sync.Mutex
	delivered     map[int]int64 // highest offset handed out per partition
	committed     map[int]int64 // highest offset committed per partition
	acked         map[int]int64 // acknowledged, not yet committed
	kick          chan struct{} // wakes the committer
	stopCommit    context.CancelFunc
	committerDone chan struct{}
	closeOnce     sync.Once
	closeErr      error
}

// NewConsumer joins the consumer group <EventsTopic>.<cfg.Group>: Kafka's
// group ids are cluster-wide, and scoping them by topic keeps two buses on
// one cluster (tests, staging beside production) out of each other's
// groups, as NATS consumers are scoped by their stream. A new group starts at the
// oldest retained batch, so nothing published before the first consumer
// started is missed. cfg.Partitions and cfg.AckWait do not apply to Kafka:
// the group assigns partitions, and unacknowledged batches are redelivered
// when the group rebalances (a member closes or dies).
func (b *Bus) NewConsumer(ctx context.Context, cfg bus.ConsumerConfig) (bus.Consumer, error) {
	if cfg.Group == "" {
		return nil, errors.New("kafkabus: consumer: empty Group; Kafka consumers need a consumer group name")
	}
	if len(cfg.Partitions) > 0 {
		b.log.Debug("consumer partitions ignored: the Kafka group assigns them", "group", cfg.Group)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	hb := min(b.cfg.SessionTimeout/5, 3*time.Second)
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:           b.cfg.Brokers,
		GroupID:           b.cfg.EventsTopic + "." + cfg.Group,
		Topic:             b.cfg.EventsTopic,
		Dialer:            b.dialer,
		QueueCapacity:     256,
		MinBytes:          1,
		MaxBytes:          b.cfg.MaxMessageBytes,
		MaxWait:           100 * time.Millisecond,
		HeartbeatInterval: hb,
		CommitInterval:    0, // each CommitMessages call is one commit; see committer
		SessionTimeout:    b.cfg.SessionTimeout,
		RebalanceTimeout:  b.cfg.SessionTimeout,
		JoinGroupBackoff:  250 * time.Millisecond,
		StartOffset:       startOffset(cfg.StartAtEnd),
		ReadBackoffMin:    50 * time.Millisecond,
		ReadBackoffMax:    time.Second,
		MaxAttempts:       1 << 30,
		ErrorLogger:       kafkaLogger(b.log),
	})
	pctx, cancel := context.WithCancel(context.Background())
	c := &Consumer{
		b:             b,
		r:             r,
		group:         cfg.Group,
		msgs:          make(chan kafka.Message, 256),
		cancel:        cancel,
		done:          make(chan struct{}),
		delivered:     map[int]int64{},
		committed:     map[int]int64{},
		acked:         map[int]int64{},
		kick:          make(chan struct{}, 1),
		committerDone: make(chan struct{}),
	}
	cctx, stopCommit := context.WithCancel(context.Background())
	c.stopCommit = stopCommit
	go c.pump(pctx)
	go c.committer(cctx)
	return c, nil
}

// pump moves messages from the group reader into c.msgs so that Fetch can
// return many at once without waiting on each.
func (c *Consumer) pump(ctx context.Context) {
	defer close(c.done)
	backoff := 50 * time.Millisecond
	for {
		m, err := c.r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return
			}
			c.b.links.observe("consume", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		select {
		case c.msgs <- m:
		case <-ctx.Done():
			return
		}
	}
}

// Fetch returns up to max deliveries, waiting at most wait for the first.
func (c *Consumer) Fetch(ctx context.Context, max int, wait time.Duration) ([]bus.Delivery, error) {
	if max <= 0 {
		return nil, nil
	}
	select {
	case <-c.done:
		return nil, fmt.Errorf("kafkabus: fetch (group %s): %w", c.group, bus.ErrClosed)
	default:
	}
	var first kafka.Message
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case first = <-c.msgs:
	case <-c.done:
		return nil, fmt.Errorf("kafkabus: fetch (group %s): %w", c.group, bus.ErrClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return []bus.Delivery{}, nil
	}
	out := make([]bus.Delivery, 0, min(max, 1+len(c.msgs)))
	c.mu.Lock()
	defer c.mu.Unlock()
	out = append(out, c.delivery(first))
	for len(out) < max {
		select {
		case m := <-c.msgs:
			out = append(out, c.delivery(m))
		default:
			return out, nil
		}
	}
	return out, nil
}

// delivery converts m; c.mu is held.
func (c *Consumer) delivery(m kafka.Message) bus.Delivery {
	d := toDelivery(m)
	if last, ok := c.delivered[m.Partition]; ok && m.Offset <= last {
		// The group handed this partition back from its committed offset
		// (a rebalance): we have delivered this batch before.
		d.Redelivered = true
		if c.committed[m.Partition] >= m.Offset {
			c.committed[m.Partition] = m.Offset - 1
		}
	}
	c.delivered[m.Partition] = m.Offset
	return d
}

// toDelivery converts a message of the events topic, marking it Invalid
// when it lacks what a keymeter event batch carries.
func toDelivery(m kafka.Message) bus.Delivery {
	d := bus.Delivery{
		Partition: m.Partition,
		Position:  uint64(m.Offset),
		Data:      m.Value,
	}
	var typ string
	var hasID, hasType bool
	for _, h := range m.Headers {
		switch h.Key {
		case bus.HeaderBatchID:
			d.BatchID, hasID = string(h.Value), true
		case bus.HeaderSource:
			d.Source = string(h.Value)
		case bus.HeaderType:
			typ, hasType = string(h.Value), true
		}
	}
	switch {
	case !hasID || d.BatchID == "":
		d.Invalid = "missing header " + bus.HeaderBatchID
	case !hasType:
		d.Invalid = "missing header " + bus.HeaderType
	case typ != bus.TypeEventBatch:
		d.Invalid = fmt.Sprintf("header %s is %q, want %q", bus.HeaderType, typ, bus.TypeEventBatch)
	}
	return d
}

// Ack records that d and every earlier batch of its partition are done.
// It does not wait for the broker: a committer goroutine commits at once,
// folding the acks that arrive meanwhile (all partitions) into its next
// commit, so a consumer acking per fetch is not slowed by one round trip
// per partition. Close commits what is left and reports if that failed.
// An ack lost to a crash means redelivery, never loss.
func (c *Consumer) Ack(ctx context.Context, d bus.Delivery) error {
	select {
	case <-c.done:
		return fmt.Errorf("kafkabus: ack %d/%d (group %s): %w", d.Partition, d.Position, c.group, bus.ErrClosed)
	default:
	}
	off := int64(d.Position)
	c.mu.Lock()
	if last, ok := c.committed[d.Partition]; ok && off <= last {
		c.mu.Unlock()
		return nil
	}
	if last, ok := c.acked[d.Partition]; !ok || off > last {
		c.acked[d.Partition] = off
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default: // a commit is due already and will include this one
	}
	return nil
}

func (c *Consumer) committer(ctx context.Context) {
	defer close(c.committerDone)
	for {
		select {
		case <-c.kick:
			// ctx ends at Close, which must not wait out a commit stuck on
			// a dead broker: it makes its own final commit.
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if err := c.commit(cctx); err != nil {
				// Kept for the next commit; kafka-go logs the detail.
				c.b.log.Debug("commit failed", "group", c.group, "err", err)
			}
			cancel()
		case <-ctx.Done():
			return
		}
	}
}

// commit sends every pending ack in one offset commit.
func (c *Consumer) commit(ctx context.Context) error {
	c.mu.Lock()
	if len(c.acked) == 0 {
		c.mu.Unlock()
		return nil
	}
	msgs := make([]kafka.Message, 0, len(c.acked))
	for p, off := range c.acked {
		msgs = append(msgs, kafka.Message{Topic: c.b.cfg.EventsTopic, Partition: p, Offset: off})
	}
	clear(c.acked)
	c.mu.Unlock()

	err := c.r.CommitMessages(ctx, msgs...)
	c.b.links.observe("commit", err)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range msgs {
		if err != nil {
			// Retry with the next commit unless a later ack superseded it.
			if last, ok := c.acked[m.Partition]; !ok || m.Offset > last {
				c.acked[m.Partition] = m.Offset
			}
			continue
		}
		if last, ok := c.committed[m.Partition]; !ok || m.Offset > last {
			c.committed[m.Partition] = m.Offset
		}
	}
	if err != nil {
		return fmt.Errorf("kafkabus: commit (group %s): %w", c.group, err)
	}
	return nil
}

// Close commits the pending acks, then leaves the group; unacknowledged
// batches go to the members left (or the next to join) from the last
// committed offset.
func (c *Consumer) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		<-c.done
		c.stopCommit()
		<-c.committerDone
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cerr := c.commit(ctx)
		c.closeErr = errors.Join(cerr, c.r.Close())
	})
	return c.closeErr
}

// ReadRange re-reads offsets from..to (inclusive) of one event partition,
// outside any group, calling fn for each batch in order. A range that is no
// longer (or not yet) in the log is an error: replay must be exact.
func (b *Bus) ReadRange(ctx context.Context, partition int, from, to uint64, fn func(bus.Delivery) error) error {
	if partition < 0 || partition >= b.cfg.Partitions {
		return fmt.Errorf("kafkabus: read range: partition %d out of range 0..%d", partition, b.cfg.Partitions-1)
	}
	if from > to {
		return fmt.Errorf("kafkabus: read range %d/%d..%d: from after to", partition, from, to)
	}
	first, next, err := b.offsets(ctx, b.cfg.EventsTopic, []int{partition})
	if err != nil {
		return err
	}
	if int64(from) < first[partition] {
		return fmt.Errorf("kafkabus: read range %d/%d..%d: offsets before %d were deleted by retention: %w",
			partition, from, to, first[partition], bus.ErrRangeGone)
	}
	if int64(to) >= next[partition] {
		return fmt.Errorf("kafkabus: read range %d/%d..%d: the partition ends before offset %d: %w",
			partition, from, to, next[partition], bus.ErrRangeGone)
	}
	r, err := b.partitionReader(b.cfg.EventsTopic, partition, int64(from))
	if err != nil {
		return err
	}
	defer r.Close()
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			return fmt.Errorf("kafkabus: read range %d/%d..%d: %w", partition, from, to, err)
		}
		if m.Offset > int64(to) {
			return nil
		}
		if err := fn(toDelivery(m)); err != nil {
			return err
		}
		if m.Offset == int64(to) {
			return nil
		}
	}
}

func startOffset(atEnd bool) int64 {
	if atEnd {
		return kafka.LastOffset
	}
	return kafka.FirstOffset
}

var _ bus.Lagger = (*Bus)(nil)

// Lag is, per partition, the messages between the group's committed offset
// and the end of the events topic.
func (b *Bus) Lag(ctx context.Context, group string) (map[int]uint64, error) {
	parts := make([]int, b.cfg.Partitions)
	for i := range parts {
		parts[i] = i
	}
	first, next, err := b.offsets(ctx, b.cfg.EventsTopic, parts)
	if err != nil {
		return nil, err
	}
	resp, err := b.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: b.cfg.EventsTopic + "." + group, Topics: map[string][]int{b.cfg.EventsTopic: parts}})
	if err != nil {
		return nil, fmt.Errorf("kafkabus: lag of %s: %w", group, err)
	}
	committed := map[int]int64{}
	for _, p := range resp.Topics[b.cfg.EventsTopic] {
		if p.CommittedOffset >= 0 {
			committed[p.Partition] = p.CommittedOffset
		}
	}
	out := map[int]uint64{}
	for _, p := range parts {
		from, ok := committed[p]
		if !ok {
			from = first[p] // nothing committed yet: the group starts at the beginning
		}
		if n := next[p] - from; n > 0 {
			out[p] = uint64(n)
		} else {
			out[p] = 0
		}
	}
	return out, nil
}
