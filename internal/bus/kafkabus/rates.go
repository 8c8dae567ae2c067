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

// Rate reports go to a topic of their own, created on first use so that a
// deployment that does not share rate limits has no such topic. It keeps a
// minute of reports (nobody reads older ones: a subscriber starts at the
// end), in one partition (a report is a few bytes per key, a few dozen a
// second per verifier). Producing waits for the leader only: a report lost
// with a failing broker loosens the global limits for one period.
//
// A report is at most rateMaxReport bytes, half of what the writer and the
// topic (max.message.bytes, set when the topic is made) take in one
// message: a longer one is split by its sender (see MaxReportBytes).
const (
	rateRetention  = time.Minute
	rateWriteTries = 3
	rateMaxMessage = 1 << 20
	rateMaxReport  = rateMaxMessage / 2
)

// rates is the bus's RateTransport.
type rates struct {
	b *Bus
	w *kafka.Writer

	emu   sync.Mutex // serializes ensure
	parts []int      // the topic's partitions, once it is known to exist (under emu)

	mu     sync.Mutex
	subs   map[*rateSub]struct{}
	closed bool
}

type rateSub struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex // held while fn runs: stop waits for it
	done   bool
}

func newRates(b *Bus) *rates {
	return &rates{b: b, subs: map[*rateSub]struct{}{}, w: &kafka.Writer{
		Addr:            b.addr,
		Topic:           b.cfg.RateLimitsTopic,
		Balancer:        &kafka.RoundRobin{},
		MaxAttempts:     rateWriteTries,
		WriteBackoffMin: 10 * time.Millisecond,
		WriteBackoffMax: 100 * time.Millisecond,
		BatchTimeout:    time.Millisecond,
		BatchBytes:      rateMaxMessage,
		RequiredAcks:    kafka.RequireOne,
		Transport:       b.transport,
		ErrorLogger:     kafkaLogger(b.log),
	}}
}

// RateTransport carries rate-limit reports on the topic RateLimitsTopic
// (default keymeter.ratelimits), read by every subscriber outside any
// consumer group, from the end of the log.
func (b *Bus) RateTransport() bus.RateTransport { return b.rates }

// MaxReportBytes is a fixed 512 KiB (see rateMaxReport).
func (t *rates) MaxReportBytes() int { return rateMaxReport }

func (t *rates) PublishRates(ctx context.Context, r bus.RateReport) error {
	if _, err := t.ensure(ctx); err != nil {
		return err
	}
	if err := t.w.WriteMessages(ctx, kafka.Message{Value: r.Data, Time: r.Time}); err != nil {
		return fmt.Errorf("kafkabus: publish rate report: %w", err)
	}
	return nil
}

// SubscribeRates reads every partition of the topic from its end as of the
// call, so that every report published after it returns is seen.
func (t *rates) SubscribeRates(ctx context.Context, fn func(bus.RateReport)) (func(), error) {
	parts, err := t.ensure(ctx)
	if err != nil {
		return nil, err
	}
	_, next, err := t.b.offsets(ctx, t.b.cfg.RateLimitsTopic, parts)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	s := &rateSub{cancel: cancel}
	for _, p := range parts {
		r, err := t.b.partitionReader(t.b.cfg.RateLimitsTopic, p, next[p])
		if err != nil {
			s.stop()
			return nil, err
		}
		s.wg.Add(1)
		go s.read(rctx, t.b.links, r, fn)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		s.stop()
		return nil, bus.ErrClosed
	}
	t.subs[s] = struct{}{}
	return func() {
		t.mu.Lock()
		delete(t.subs, s)
		t.mu.Unlock()
		s.stop()
	}, nil
}

func (s *rateSub) read(ctx context.Context, links *linkState, r *kafka.Reader, fn func(bus.RateReport)) {
	defer s.wg.Done()
	defer r.Close()
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return
			}
			links.observe("subscribe rate reports", err)
			_ = ctxtime.Sleep(ctx, 100*time.Millisecond)
			continue
		}
		s.mu.Lock()
		if !s.done {
			fn(bus.RateReport{Data: m.Value, Time: m.Time})
		}
		s.mu.Unlock()
	}
}

// stop ends the readers and returns once fn is no longer called.
func (s *rateSub) stop() {
	s.mu.Lock()
	s.done = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// ensure creates the topic if it is missing and returns its partitions.
func (t *rates) ensure(ctx context.Context) ([]int, error) {
	t.emu.Lock()
	defer t.emu.Unlock()
	if t.parts != nil {
		return t.parts, nil
	}
	topic := t.b.cfg.RateLimitsTopic
	req := &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: 1, ReplicationFactor: t.b.cfg.ReplicationFactor,
		ConfigEntries: []kafka.ConfigEntry{
			{ConfigName: "cleanup.policy", ConfigValue: "delete"},
			{ConfigName: "retention.ms", ConfigValue: fmt.Sprint(rateRetention.Milliseconds())},
			// Retention deletes whole segments: roll one as often.
			{ConfigName: "segment.ms", ConfigValue: fmt.Sprint(rateRetention.Milliseconds())},
			// Whatever the broker's message.max.bytes: reports fit.
			{ConfigName: "max.message.bytes", ConfigValue: fmt.Sprint(rateMaxMessage)},
		},
	}}}
	var res *kafka.CreateTopicsResponse
	err := retry(ctx, t.b.links, "create topics", func() (err error) {
		res, err = t.b.client.CreateTopics(ctx, req)
		return err
	})
	if err == nil {
		if err = res.Errors[topic]; errors.Is(err, kafka.TopicAlreadyExists) {
			err = nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kafkabus: create topic %s: %w", topic, err)
	}
	for {
		parts, problem := t.partitions(ctx, topic)
		if problem == "" {
			t.parts = parts
			return parts, nil
		}
		if err := ctxtime.Sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, fmt.Errorf("kafkabus: topic %s not ready (%s): %w", topic, problem, err)
		}
	}
}

// partitions lists the partitions of topic, or says why it is not ready
// (creation is asynchronous: leaders come after the answer).
func (t *rates) partitions(ctx context.Context, topic string) (parts []int, problem string) {
	md, err := t.b.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, "metadata: " + err.Error()
	}
	for _, tm := range md.Topics {
		if tm.Name != topic {
			continue
		}
		if tm.Error != nil {
			return nil, tm.Error.Error()
		}
		for _, p := range tm.Partitions {
			if p.Leader.Host == "" {
				return nil, fmt.Sprintf("partition %d has no leader", p.ID)
			}
			parts = append(parts, p.ID)
		}
	}
	if len(parts) == 0 {
		return nil, "no partitions yet"
	}
	return parts, ""
}

// close stops the subscriptions and the writer (bounded by ctx).
func (t *rates) close(ctx context.Context) error {
	t.mu.Lock()
	t.closed = true
	subs := t.subs
	t.subs = nil
	t.mu.Unlock()
	for s := range subs {
		s.stop()
	}
	done := make(chan error, 1)
	go func() { done <- t.w.Close() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("kafkabus: close rate writer: %w", ctx.Err())
	}
}
