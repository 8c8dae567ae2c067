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
	"github.com/keymeter/keymeter/internal/ctxtime"
)

// consumer reads event batches through one durable pull consumer per
// partition (filter subject <prefix>.events.<p>, AckAll), so that a
// delivery's stream sequence orders it within its partition and acking it
// acknowledges everything before it in that partition.
type consumer struct {
	fatal  chan error // an ErrConsumerLost, once
	b      *Bus
	group  string
	ch     chan bus.Delivery
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed chan struct{}
	once   sync.Once
}

// NewConsumer binds (creating if needed) the durable consumers of group.
func (b *Bus) NewConsumer(ctx context.Context, cfg bus.ConsumerConfig) (bus.Consumer, error) {
	if cfg.Group == "" {
		return nil, errors.New("natsbus: consumer group is required")
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.LeaseTTL > 0 {
		return b.newLeaseConsumer(ctx, cfg)
	}
	parts := cfg.Partitions
	if len(parts) == 0 {
		for p := range b.cfg.Partitions {
			parts = append(parts, p)
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	// The pull iterators already hold ConsumerPrefetch batches per
	// partition; the channel adds one partition's worth, not another copy
	// of all of them (measured: ~100 MB less heap in bench pipeline).
	c := &consumer{fatal: make(chan error, 1), b: b, group: cfg.Group, ch: make(chan bus.Delivery, b.cfg.ConsumerPrefetch), cancel: cancel, closed: make(chan struct{})}
	for _, p := range parts {
		if p < 0 || p >= b.cfg.Partitions {
			cancel()
			return nil, fmt.Errorf("natsbus: partition %d out of range 0-%d", p, b.cfg.Partitions-1)
		}
		cons, err := b.bindPartition(ctx, cfg, p)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("natsbus: consumer %s partition %d: %w", cfg.Group, p, err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("natsbus: consumer %s partition %d: %w", cfg.Group, p, err)
		}
		c.wg.Add(1)
		go c.pump(runCtx, p, cons, info.Created)
	}
	return c, nil
}

// bindPartition creates a durable consumer of one partition, starting
// right after the ack floor of the group's consumers of it, which it
// then deletes: so it starts with nothing pending and no other process
// reading it.
//
// With AckAll, acking position n acknowledges everything before it in the
// partition, so a process may ack n only if every delivery before n came
// to it. Hence a bind always replaces the consumer, even one with nothing
// pending: a consumer that is reused is shared with whoever still pulls
// from it (a dead or fenced lease holder, a process still running with the
// same --own-partitions), and the batches the server hands that process
// are acknowledged unprocessed by the new owner's next ack (measured: the
// lease test's lost batches). Deleting the old consumer ends the old
// owner's pulls (it sees ErrConsumerLost); the new one's delivery sequence
// starts at 1, and deliverySeq checks that this process gets every
// delivery from there on. Every first delivery comes in position order,
// and later redeliveries (after AckWait) are of positions already seen.
// The new consumer has a name of its own (see consumerName). It is
// created before the old ones are deleted, so that a crash in between
// leaves the ack floor behind.
func (b *Bus) bindPartition(ctx context.Context, cfg bus.ConsumerConfig, p int) (jetstream.Consumer, error) {
	cc := jetstream.ConsumerConfig{
		Durable:       consumerName(cfg.Group, p),
		FilterSubject: b.partitionSubject(p),
		AckPolicy:     jetstream.AckAllPolicy,
		AckWait:       cfg.AckWait,
		MaxAckPending: 100_000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if cfg.StartAtEnd {
		cc.DeliverPolicy = jetstream.DeliverNewPolicy
		cc.InactiveThreshold = time.Minute
	}
	cs, err := b.groupConsumers(ctx, cfg.Group)
	if err != nil {
		return nil, err
	}
	var floor uint64
	for _, name := range cs[p] {
		old, err := b.js.Consumer(ctx, b.streams.events, name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		floor = max(floor, old.CachedInfo().AckFloor.Stream)
	}
	if floor > 0 {
		cc.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cc.OptStartSeq = floor + 1
	}
	cons, err := b.js.CreateConsumer(ctx, b.streams.events, cc)
	if err != nil {
		return nil, err
	}
	for _, name := range cs[p] {
		if err := b.js.DeleteConsumer(ctx, b.streams.events, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, err
		}
	}
	return cons, nil
}

// lost reports whether this partition's durable consumer was deleted or
// replaced by another process (bindPartition elsewhere): then two processes
// would ack each other's batches, so this one must stop.
//
// In a cluster a consumer whose leader just died is briefly not found (until
// its replicas elect another): only a consumer replaced by another of the
// group's partition, still missing after lostGrace, or created anew, is
// lost.
func (c *consumer) lost(ctx context.Context, p int, cons jetstream.Consumer, created time.Time) bool {
	info, err := cons.Info(ctx)
	replaced := errors.Is(err, jetstream.ErrConsumerNotFound) && c.b.replacedBy(ctx, c.group, p, cons.CachedInfo().Name)
	for deadline := time.Now().Add(lostGrace); !replaced && errors.Is(err, jetstream.ErrConsumerNotFound) && time.Now().Before(deadline); {
		if ctxtime.Sleep(ctx, 250*time.Millisecond) != nil {
			return false
		}
		info, err = cons.Info(ctx)
	}
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound), err == nil && !info.Created.Equal(created):
		select {
		case c.fatal <- &lostError{fmt.Sprintf("natsbus: partition %d: its durable consumer was deleted or replaced: another process took the partition over", p)}:
		default:
		}
		return true
	}
	return false
}

// lostGrace is how long a consumer may be missing before it counts as
// taken over: longer than a JetStream cluster's leader election.
const lostGrace = 15 * time.Second

// pump moves one partition's messages into the shared channel, restarting
// the pull iterator after connection trouble.
func (c *consumer) pump(ctx context.Context, p int, cons jetstream.Consumer, created time.Time) {
	defer c.wg.Done()
	log := c.b.log.With("partition", p)
	broken := false
	var seen deliverySeq
	for ctx.Err() == nil {
		it, err := cons.Messages(jetstream.PullMaxMessages(c.b.cfg.ConsumerPrefetch))
		if err != nil {
			if !broken {
				log.Warn("nats consumer: cannot pull, retrying", "err", err)
				broken = true
			}
			_ = ctxtime.Sleep(ctx, 500*time.Millisecond)
			continue
		}
		stop := context.AfterFunc(ctx, it.Stop)
		for {
			msg, err := it.Next()
			if err != nil {
				if ctx.Err() == nil && c.lost(ctx, p, cons, created) {
					stop()
					it.Stop()
					return
				}
				if ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					if !broken {
						log.Warn("nats consumer: pull interrupted, retrying", "err", err)
						broken = true
					}
				}
				break
			}
			if broken {
				log.Info("nats consumer: pulling again")
				broken = false
			}
			d, derr := toDelivery(p, msg)
			if derr != nil {
				continue // no metadata: not a JetStream message; cannot ack it either
			}
			md, _ := msg.Metadata() // parsed already by toDelivery
			if from, to, gap := seen.next(md.Sequence.Consumer); gap {
				// A delivery of this consumer never reached this process:
				// the client dropped it (slow consumer), or another process
				// pulled it. With AckAll, acking this newer one would
				// acknowledge it unprocessed: give up the partition
				// instead; the next bind restarts at the ack floor and the
				// missed batches come again.
				err := &lostError{fmt.Sprintf("natsbus: partition %d: deliveries %d-%d of the consumer never reached this process "+
					"(dropped by the client as a slow consumer, or pulled by another process); giving up the partition so that they are redelivered", p, from, to)}
				log.Error("nats consumer: deliveries missed; giving up the partition so that they are redelivered", "from", from, "to", to)
				select {
				case c.fatal <- err:
				default:
				}
				stop()
				it.Stop()
				return
			}
			select {
			case c.ch <- d:
			case <-ctx.Done():
			}
		}
		stop()
		it.Stop()
		_ = ctxtime.Sleep(ctx, 100*time.Millisecond)
	}
}

// deliverySeq follows a consumer's delivery sequence, which the server
// raises by one for every delivery, redeliveries included, starting at 1
// (bindPartition always creates the consumer): a delivery other than the
// next means deliveries this process never got. A consumer leader elected
// anew may go back (it resumes from replicated state); that is no loss.
type deliverySeq struct{ last uint64 }

// next records sequence n and reports the deliveries missed before it.
func (s *deliverySeq) next(n uint64) (from, to uint64, gap bool) {
	last := s.last
	s.last = n
	if n <= last+1 {
		return 0, 0, false
	}
	return last + 1, n - 1, true
}

// lostError is an ErrConsumerLost whose message says what happened.
type lostError struct{ msg string }

func (e *lostError) Error() string { return e.msg }
func (e *lostError) Unwrap() error { return bus.ErrConsumerLost }

func toDelivery(p int, msg jetstream.Msg) (bus.Delivery, error) {
	md, err := msg.Metadata()
	if err != nil {
		return bus.Delivery{}, err
	}
	h := msg.Headers()
	d := bus.Delivery{
		Partition:   p,
		Position:    md.Sequence.Stream,
		BatchID:     h.Get(bus.HeaderBatchID),
		Source:      h.Get(bus.HeaderSource),
		Data:        msg.Data(),
		Redelivered: md.NumDelivered > 1,
		Resent:      h.Get(bus.HeaderResent) == "1",
		Ref:         msg,
	}
	d.Invalid = envelopeProblem(h)
	return d, nil
}

// envelopeProblem says what is wrong with a message's CloudEvents headers.
func envelopeProblem(h nats.Header) string {
	switch {
	case h.Get(bus.HeaderBatchID) == "":
		return "missing header " + bus.HeaderBatchID + " (batch id)"
	case h.Get(bus.HeaderType) != bus.TypeEventBatch:
		return fmt.Sprintf("header %s is %q, want %q", bus.HeaderType, h.Get(bus.HeaderType), bus.TypeEventBatch)
	case h.Get(bus.HeaderContentType) != "" && h.Get(bus.HeaderContentType) != bus.ContentTypeProtobuf:
		return fmt.Sprintf("content-type %q, want %q", h.Get(bus.HeaderContentType), bus.ContentTypeProtobuf)
	}
	return ""
}

func (c *consumer) Fetch(ctx context.Context, max int, wait time.Duration) ([]bus.Delivery, error) {
	select {
	case <-c.closed:
		return nil, bus.ErrClosed
	case err := <-c.fatal:
		c.fatal <- err // stays lost
		return nil, err
	default:
	}
	var out []bus.Delivery
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case d := <-c.ch:
		out = append(out, d)
	case <-t.C:
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.closed:
		return nil, bus.ErrClosed
	}
	for len(out) < max {
		select {
		case d := <-c.ch:
			out = append(out, d)
		default:
			return out, nil
		}
	}
	return out, nil
}

func (c *consumer) Ack(ctx context.Context, d bus.Delivery) error {
	msg, ok := d.Ref.(jetstream.Msg)
	if !ok {
		return errors.New("natsbus: ack of a delivery this consumer did not make")
	}
	// DoubleAck waits for the server's confirmation, so an ack that returns
	// nil is durable: the batch will not be redelivered.
	//
	// ErrMsgAlreadyAckd means an earlier DoubleAck of this delivery was
	// confirmed: done. A caller retrying a set of acks after one of them
	// failed (a consumer leader elected in a cluster) acks the others again;
	// taking that for a failure retried them for ever.
	if err := msg.DoubleAck(ctx); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		return fmt.Errorf("natsbus: ack partition %d position %d: %w", d.Partition, d.Position, err)
	}
	return nil
}

func (c *consumer) Close(ctx context.Context) error {
	c.once.Do(func() {
		close(c.closed)
		c.cancel()
		c.wg.Wait()
	})
	return nil
}

// ReadRange re-reads [from, to] of a partition with an ordered consumer.
func (b *Bus) ReadRange(ctx context.Context, partition int, from, to uint64, fn func(bus.Delivery) error) error {
	if from > to {
		return fmt.Errorf("natsbus: read range: from %d > to %d", from, to)
	}
	oc, err := b.js.OrderedConsumer(ctx, b.streams.events, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{b.partitionSubject(partition)},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from,
	})
	if err != nil {
		return fmt.Errorf("natsbus: read range p%d [%d,%d]: %w", partition, from, to, err)
	}
	for {
		batch, err := oc.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("natsbus: read range p%d [%d,%d]: %w", partition, from, to, err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			d, err := toDelivery(partition, msg)
			if err != nil {
				return err
			}
			if d.Position > to {
				return nil
			}
			d.Ref = nil
			if err := fn(d); err != nil {
				return err
			}
			if d.Position == to {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("natsbus: read range p%d [%d,%d]: %w", partition, from, to, err)
		}
		if n == 0 {
			// Nothing more in the stream: the rest of the range is gone
			// (expired by max-age) or was never there.
			return fmt.Errorf("natsbus: read range p%d [%d,%d]: stream ends before position %d: %w", partition, from, to, to, bus.ErrRangeGone)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

var _ bus.Lagger = (*Bus)(nil)

// Lag is, per partition, the batches the group's consumer has not had
// acknowledged yet (pending plus delivered-unacked).
func (b *Bus) Lag(ctx context.Context, group string) (map[int]uint64, error) {
	cs, err := b.groupConsumers(ctx, group)
	if err != nil {
		return nil, fmt.Errorf("natsbus: lag of %s: %w", group, err)
	}
	out := map[int]uint64{}
	for p := range b.cfg.Partitions {
		info, err := b.currentConsumer(ctx, cs[p])
		if err != nil {
			return nil, fmt.Errorf("natsbus: lag of %s: %w", group, err)
		}
		if info != nil {
			out[p] = info.NumPending + uint64(info.NumAckPending)
		}
	}
	return out, nil
}

// DeleteGroup deletes the durable consumers of group (one per partition),
// for a tail such as the console's live overview that is done; a group
// that does not exist is no error.
func (b *Bus) DeleteGroup(ctx context.Context, group string) error {
	cs, err := b.groupConsumers(ctx, group)
	if err != nil {
		return fmt.Errorf("natsbus: delete group %s: %w", group, err)
	}
	for _, names := range cs {
		for _, name := range names {
			err := b.js.DeleteConsumer(ctx, b.streams.events, name)
			if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("natsbus: delete group %s: %w", group, err)
			}
		}
	}
	return nil
}
