package kafkabus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/keymeter/keymeter/internal/bus"
)

var _ bus.Publisher = (*Publisher)(nil)

// Publisher writes event batches asynchronously. At most MaxPending batches
// are unacknowledged at once; Publish waits for room.
type Publisher struct {
	b     *Bus
	w     *kafka.Writer
	slots chan struct{} // one token per unacknowledged batch

	mu      sync.Mutex
	pending map[*pubAck]struct{}
	closed  chan struct{}
	once    sync.Once
}

func newPublisher(b *Bus, codec kafka.Compression) *Publisher {
	p := &Publisher{
		b:       b,
		slots:   make(chan struct{}, b.cfg.MaxPending),
		pending: make(map[*pubAck]struct{}, b.cfg.MaxPending),
		closed:  make(chan struct{}),
	}
	p.w = &kafka.Writer{
		Addr:            b.addr,
		Topic:           b.cfg.EventsTopic,
		Balancer:        KeyBalancer{},
		MaxAttempts:     b.cfg.WriteAttempts,
		WriteBackoffMin: 50 * time.Millisecond,
		WriteBackoffMax: time.Second,
		// Batches are big already (many events per message): let the byte
		// bound, not the count, end a produce request.
		BatchSize:    10000,
		BatchBytes:   int64(b.cfg.MaxMessageBytes),
		BatchTimeout: b.cfg.BatchTimeout,
		WriteTimeout: 10 * time.Second,
		RequiredAcks: kafka.RequireAll,
		Async:        true,
		Completion:   p.complete,
		Compression:  codec,
		Transport:    b.transport,
		ErrorLogger:  kafkaLogger(b.log),
	}
	return p
}

// pubAck is the future of one batch.
type pubAck struct {
	done chan struct{}
	err  error
}

func (a *pubAck) Done() <-chan struct{} { return a.done }

// Err is nil after Done if the batch was stored.
func (a *pubAck) Err() error {
	select {
	case <-a.done:
		return a.err
	default:
		return nil
	}
}

// Publish queues m for the events topic, on partition bus.Partition(m.Key).
// It blocks while MaxPending batches are unacknowledged and returns an error
// wrapping bus.ErrBackpressure if ctx ends first.
func (p *Publisher) Publish(ctx context.Context, m bus.Message) (bus.PubAck, error) {
	if m.BatchID == "" {
		return nil, errors.New("kafkabus: publish: empty BatchID (it becomes the ce-id header used for deduplication)")
	}
	select {
	case <-p.closed:
		return nil, fmt.Errorf("kafkabus: publish batch %s: %w", m.BatchID, bus.ErrClosed)
	default:
	}
	select {
	case p.slots <- struct{}{}:
	case <-p.closed:
		return nil, fmt.Errorf("kafkabus: publish batch %s: %w", m.BatchID, bus.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("kafkabus: publish batch %s: %w: %d batches unacknowledged: %w",
			m.BatchID, bus.ErrBackpressure, cap(p.slots), ctx.Err())
	}
	ack := &pubAck{done: make(chan struct{})}
	p.mu.Lock()
	p.pending[ack] = struct{}{}
	p.mu.Unlock()
	msg := kafka.Message{
		Key:   []byte(m.Key),
		Value: m.Data,
		Headers: []kafka.Header{
			{Key: bus.HeaderBatchID, Value: []byte(m.BatchID)},
			{Key: bus.HeaderSource, Value: []byte(m.Source)},
			{Key: bus.HeaderType, Value: []byte(bus.TypeEventBatch)},
			{Key: bus.HeaderSpecVersion, Value: []byte("1.0")},
			{Key: bus.HeaderTime, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))},
			{Key: bus.HeaderContentType, Value: []byte(bus.ContentTypeProtobuf)},
		},
		WriterData: ack,
	}
	if m.Resent {
		msg.Headers = append(msg.Headers, kafka.Header{Key: bus.HeaderResent, Value: []byte("1")})
	}
	// In async mode WriteMessages only fails before queueing: an unknown
	// topic (metadata not yet seen), a message over BatchBytes, a closed
	// writer. The first is transient.
	err := retry(ctx, p.b.links, "publish", func() error {
		err := p.w.WriteMessages(ctx, msg)
		if errors.Is(err, kafka.UnknownTopicOrPartition) {
			return err
		}
		if err != nil {
			return permanent{err}
		}
		return nil
	})
	if err != nil {
		var perm permanent
		if errors.As(err, &perm) {
			err = perm.err
		}
		p.resolve(ack, err)
		if errors.Is(err, kafka.MessageSizeTooLarge) {
			return nil, fmt.Errorf("kafkabus: publish batch %s (%d bytes, limit %d): %w: %w", m.BatchID, len(m.Data), p.b.cfg.MaxMessageBytes, bus.ErrTooLarge, err)
		}
		return nil, fmt.Errorf("kafkabus: publish batch %s: %w", m.BatchID, err)
	}
	return ack, nil
}

// MaxMessageBytes is the producer's message size limit (MaxMessageBytes,
// headers and key included; bus.MessageLimiter).
func (p *Publisher) MaxMessageBytes() int { return p.b.cfg.MaxMessageBytes }

// permanent marks an error retry must not retry.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// complete is kafka-go's completion callback for every produce request.
func (p *Publisher) complete(msgs []kafka.Message, err error) {
	p.b.links.observe("publish", err)
	for i := range msgs {
		if ack, ok := msgs[i].WriterData.(*pubAck); ok {
			var aerr error
			if err != nil && errors.Is(err, kafka.MessageSizeTooLarge) {
				// The broker's limit (max.message.bytes) is below ours.
				aerr = fmt.Errorf("kafkabus: batch %s: %w: %w", headerValue(msgs[i].Headers, bus.HeaderBatchID), bus.ErrTooLarge, err)
			} else if err != nil {
				aerr = fmt.Errorf("kafkabus: batch %s: %w", headerValue(msgs[i].Headers, bus.HeaderBatchID), err)
			}
			p.resolve(ack, aerr)
		}
	}
}

func (p *Publisher) resolve(ack *pubAck, err error) {
	p.mu.Lock()
	_, ok := p.pending[ack]
	delete(p.pending, ack)
	p.mu.Unlock()
	if !ok {
		return
	}
	ack.err = err
	close(ack.done)
	<-p.slots
}

// Flush waits until every batch published before the call is acknowledged,
// and reports how many of them failed.
func (p *Publisher) Flush(ctx context.Context) error {
	p.mu.Lock()
	acks := make([]*pubAck, 0, len(p.pending))
	for a := range p.pending {
		acks = append(acks, a)
	}
	p.mu.Unlock()
	var failed int
	var first error
	for _, a := range acks {
		select {
		case <-a.done:
		case <-ctx.Done():
			return fmt.Errorf("kafkabus: flush: %w", ctx.Err())
		}
		if a.err != nil {
			failed++
			if first == nil {
				first = a.err
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("kafkabus: flush: %d of %d batches failed: %w", failed, len(acks), first)
	}
	return nil
}

// close stops intake, waits (bounded by ctx) for pending batches, then
// closes the writer.
func (p *Publisher) close(ctx context.Context) error {
	p.once.Do(func() { close(p.closed) })
	ferr := p.Flush(ctx)
	done := make(chan error, 1)
	go func() { done <- p.w.Close() }()
	select {
	case err := <-done:
		return errors.Join(ferr, err)
	case <-ctx.Done():
		return errors.Join(ferr, fmt.Errorf("kafkabus: close publisher: %w", ctx.Err()))
	}
}

func headerValue(hs []kafka.Header, key string) string {
	for _, h := range hs {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
