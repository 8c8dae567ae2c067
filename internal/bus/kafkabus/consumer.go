package kafkabus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/keymeter/keymeter/internal/bus"
)

var _ bus.Consumer = (*Consumer)(nil)

// Consumer is one member of a consumer group on the events topic. The group
// assigns it partitions, generation by generation; Ack commits the group's
// offset within the current generation.
//
// Generation returns the group generation of the deliveries the last Fetch
// returned: Fetch hands out only messages read for the current generation
// (a partition this member lost in a rebalance stops delivering at once),
// so a consumer that fences its writes by generation (the aggregator) sees
// every delivery tagged with the generation it belongs to.
type Consumer struct {
	b      *Bus
	cg     *kafka.ConsumerGroup
	group  string
	start  int64 // kafka.FirstOffset or LastOffset for a partition never committed
	msgs   chan genMessage
	cancel context.CancelFunc
	done   chan struct{}

	cur     atomic.Pointer[genState] // the current generation (nil: none yet)
	fetched atomic.Pointer[genState] // the generation of the last Fetch's deliveries

	mu            sync.Mutex
	gen           *kafka.Generation
	acked         map[int]int64 // acknowledged, not yet committed
	kick          chan struct{} // wakes the committer
	stopCommit    context.CancelFunc
	committerDone chan struct{}
	closeOnce     sync.Once
	closeErr      error
}

// genState is a generation and the partitions it assigned to this member.
type genState struct {
	id    int64
	parts []int
}

var noGen = &genState{}

type genMessage struct {
	m   kafka.Message
	gen int64
}

// NewConsumer joins the consumer group <EventsTopic>.<cfg.Group>: Kafka's
// group ids are cluster-wide, and scoping them by topic keeps two buses on
// one cluster (tests, staging beside production) out of each other's
// groups, as NATS consumers are scoped by their stream. A new group starts at the
// oldest retained batch, so nothing published before the first consumer
// started is missed. cfg.Partitions and cfg.AckWait do not apply to Kafka:
// the group assigns partitions, and unacknowledged batches are redelivered
// when the group rebalances (a member joins, closes or dies).
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
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                b.cfg.EventsTopic + "." + cfg.Group,
		Brokers:           b.cfg.Brokers,
		Dialer:            b.dialer,
		Topics:            []string{b.cfg.EventsTopic},
		HeartbeatInterval: hb,
		SessionTimeout:    b.cfg.SessionTimeout,
		RebalanceTimeout:  b.cfg.SessionTimeout,
		JoinGroupBackoff:  250 * time.Millisecond,
		StartOffset:       startOffset(cfg.StartAtEnd),
		ErrorLogger:       kafkaLogger(b.log),
	})
	if err != nil {
		return nil, fmt.Errorf("kafkabus: consumer group %s: %w", cfg.Group, err)
	}
	pctx, cancel := context.WithCancel(context.Background())
	c := &Consumer{
		b:             b,
		cg:            cg,
		group:         cfg.Group,
		start:         startOffset(cfg.StartAtEnd),
		msgs:          make(chan genMessage, 256),
		cancel:        cancel,
		done:          make(chan struct{}),
		acked:         map[int]int64{},
		kick:          make(chan struct{}, 1),
		committerDone: make(chan struct{}),
	}
	cctx, stopCommit := context.WithCancel(context.Background())
	c.stopCommit = stopCommit
	go c.run(pctx)
	go c.committer(cctx)
	return c, nil
}

// Generation is the consumer group generation of the deliveries the last
// Fetch returned (0 before the first assignment).
func (c *Consumer) Generation() int64 { return c.fetchedGen().id }

// Assigned is the partitions that generation assigned to this member.
func (c *Consumer) Assigned() []int { return slices.Clone(c.fetchedGen().parts) }

func (c *Consumer) fetchedGen() *genState {
	if g := c.fetched.Load(); g != nil {
		return g
	}
	return noGen
}

func (c *Consumer) curGen() *genState {
	if g := c.cur.Load(); g != nil {
		return g
	}
	return noGen
}

// run follows the group's generations: for each, it reads the partitions
// assigned to this member from their committed offsets until the
// generation ends (a rebalance), then joins the next.
func (c *Consumer) run(ctx context.Context) {
	defer close(c.done)
	backoff := 50 * time.Millisecond
	for {
		gen, err := c.cg.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, kafka.ErrGroupClosed) {
				return
			}
			if !c.backOff(ctx, err, &backoff) {
				return
			}
			continue
		}
		backoff = 50 * time.Millisecond
		id := int64(gen.ID)
		c.mu.Lock()
		c.gen = gen
		clear(c.acked) // acks of the last generation: its owners' business now
		c.mu.Unlock()
		st := &genState{id: id}
		for _, pa := range gen.Assignments[c.b.cfg.EventsTopic] {
			st.parts = append(st.parts, pa.ID)
		}
		slices.Sort(st.parts)
		c.cur.Store(st)
		c.b.log.Debug("consumer group generation", "group", c.group, "generation", id, "partitions", len(gen.Assignments[c.b.cfg.EventsTopic]))
		for _, pa := range gen.Assignments[c.b.cfg.EventsTopic] {
			gen.Start(func(gctx context.Context) { c.read(gctx, id, pa) })
		}
	}
}

// backOff records err as a consume failure and waits *backoff, doubling it
// up to 2 s for the next failure; false when ctx ended meanwhile.
func (c *Consumer) backOff(ctx context.Context, err error, backoff *time.Duration) bool {
	c.b.links.observe("consume", err)
	select {
	case <-ctx.Done():
		return false
	case <-time.After(*backoff):
	}
	*backoff = min(2**backoff, 2*time.Second)
	return true
}

// read pumps one assigned partition into c.msgs until its generation ends.
func (c *Consumer) read(ctx context.Context, gen int64, pa kafka.PartitionAssignment) {
	off := pa.Offset
	if off < 0 {
		off = c.start
	}
	backoff := 50 * time.Millisecond
	var r *kafka.Reader
	defer func() {
		if r != nil {
			_ = r.Close()
		}
	}()
	for {
		if r == nil {
			var err error
			if r, err = c.b.partitionReader(c.b.cfg.EventsTopic, pa.ID, off); err != nil {
				r = nil
				if !c.backOff(ctx, err, &backoff) {
					return
				}
				continue
			}
		}
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil || !c.backOff(ctx, err, &backoff) {
				return
			}
			continue
		}
		backoff = 50 * time.Millisecond
		select {
		case c.msgs <- genMessage{m: m, gen: gen}:
		case <-ctx.Done():
			return
		}
	}
}

// Fetch returns up to max deliveries, waiting at most wait for the first.
// Messages read for a generation that has ended are dropped: the
// partition's new owner reads them again from the committed offset.
func (c *Consumer) Fetch(ctx context.Context, max int, wait time.Duration) ([]bus.Delivery, error) {
	if max <= 0 {
		return nil, nil
	}
	select {
	case <-c.done:
		return nil, fmt.Errorf("kafkabus: fetch (group %s): %w", c.group, bus.ErrClosed)
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	var out []bus.Delivery
	gen := c.curGen()
	for out == nil {
		select {
		case m := <-c.msgs:
			if gen = c.curGen(); m.gen != gen.id {
				continue
			}
			out = append(make([]bus.Delivery, 0, min(max, 1+len(c.msgs))), toDelivery(m.m))
		case <-c.done:
			return nil, fmt.Errorf("kafkabus: fetch (group %s): %w", c.group, bus.ErrClosed)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			c.fetched.Store(c.curGen())
			return []bus.Delivery{}, nil
		}
	}
	for len(out) < max {
		select {
		case m := <-c.msgs:
			if m.gen == gen.id {
				out = append(out, toDelivery(m.m))
			}
		default:
			c.fetched.Store(gen)
			return out, nil
		}
	}
	c.fetched.Store(gen)
	return out, nil
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
		case bus.HeaderResent:
			d.Resent = string(h.Value) == "1"
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
// It does not wait for the broker: a committer goroutine commits at once
// within the current generation, folding the acks that arrive meanwhile
// (all partitions) into its next commit. Close commits what is left and
// reports if that failed. An ack lost to a crash or a rebalance means
// redelivery, never loss.
func (c *Consumer) Ack(ctx context.Context, d bus.Delivery) error {
	select {
	case <-c.done:
		return fmt.Errorf("kafkabus: ack %d/%d (group %s): %w", d.Partition, d.Position, c.group, bus.ErrClosed)
	default:
	}
	off := int64(d.Position)
	c.mu.Lock()
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
			if err := c.commit(); err != nil {
				// Kept for the next commit; kafka-go logs the detail.
				c.b.log.Debug("commit failed", "group", c.group, "err", err)
			}
		case <-ctx.Done():
			return
		}
	}
}

// commit sends every pending ack in one offset commit of the current
// generation. Acks that fail are retried with the next commit, unless the
// generation has ended meanwhile.
func (c *Consumer) commit() error {
	c.mu.Lock()
	gen := c.gen
	if len(c.acked) == 0 || gen == nil {
		c.mu.Unlock()
		return nil
	}
	offs := make(map[int]int64, len(c.acked))
	for p, off := range c.acked {
		offs[p] = off + 1 // Kafka commits the next offset to read
	}
	clear(c.acked)
	c.mu.Unlock()

	err := gen.CommitOffsets(map[string]map[int]int64{c.b.cfg.EventsTopic: offs})
	c.b.links.observe("commit", err)
	if err == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen {
		for p, off := range offs {
			if last, ok := c.acked[p]; !ok || off-1 > last {
				c.acked[p] = off - 1
			}
		}
	}
	return fmt.Errorf("kafkabus: commit (group %s): %w", c.group, err)
}

// Close commits the pending acks, then leaves the group; unacknowledged
// batches go to the members left (or the next to join) from the last
// committed offset.
func (c *Consumer) Close(ctx context.Context) error {
	c.closeOnce.Do(func() {
		c.stopCommit()
		<-c.committerDone
		cerr := c.commit()
		c.cancel()
		gerr := c.cg.Close()
		<-c.done
		c.closeErr = errors.Join(cerr, gerr)
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

// DeleteGroup deletes a consumer group that has no members left, for a
// tail such as the console's live overview that is done.
func (b *Bus) DeleteGroup(ctx context.Context, group string) error {
	id := b.cfg.EventsTopic + "." + group // as NewConsumer names it
	res, err := b.client.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: []string{id}})
	if err != nil {
		return fmt.Errorf("kafkabus: delete group %s: %w", group, err)
	}
	if err := res.Errors[id]; err != nil && !errors.Is(err, kafka.GroupIdNotFound) {
		return fmt.Errorf("kafkabus: delete group %s: %w", group, err)
	}
	return nil
}
