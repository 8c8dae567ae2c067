package verifier

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymeter/keymeter/internal/keys"
)

// RateTransport carries rate-limit reports between verifiers.
type RateTransport interface {
	PublishRates(ctx context.Context, data []byte) error
	// SubscribeRates calls fn with every report published (this
	// verifier's own included) until stop.
	SubscribeRates(fn func(data []byte)) (stop func(), err error)
}

// RateShare makes per-key rate limits global, approximately: every verifier
// counts the requests it admits for rate-limited keys and, every period,
// publishes the counts; a verifier receiving a peer's report charges those
// admissions to its own bucket of each key, as if it had admitted them. A
// key's admitted rate over N verifiers then converges to its limit: a
// verifier sees its own admissions at once and its peers' one period (plus
// bus latency) late, so the overshoot is bounded by what the other
// verifiers admit in one period, at most the key's burst each. Sliding-
// window gateways that sync counters in the background work the same way.
//
// A charge moves the bucket's theoretical arrival time by n intervals, no
// further than twice the bucket's capacity ahead, so that a spike reported
// late cannot lock a key out for longer than two full windows.
type RateShare struct {
	tbl    *keys.Table
	tr     RateTransport
	id     string
	period time.Duration
	log    *slog.Logger

	now func() int64 // the clock charges are made at (tests simulate one)

	mu     sync.Mutex
	counts map[string]uint32

	sent, received, charged atomic.Uint64
}

// NewRateShare shares the rate limits of tbl's keys as verifier id, every
// period (default 50ms).
func NewRateShare(tbl *keys.Table, tr RateTransport, id string, period time.Duration, log *slog.Logger) (*RateShare, error) {
	if tbl == nil || tr == nil || id == "" {
		return nil, errors.New("verifier: rate share: table, transport and verifier id are required")
	}
	if period == 0 {
		period = 50 * time.Millisecond
	}
	if period < time.Millisecond || period > 10*time.Second {
		return nil, fmt.Errorf("verifier: rate share period %s out of range 1ms-10s", period)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &RateShare{tbl: tbl, tr: tr, id: id, period: period, log: log, counts: map[string]uint32{},
		now: func() int64 { return time.Now().UnixNano() }}, nil
}

// Note counts one admitted request of a rate-limited key.
func (s *RateShare) Note(keyID string) {
	s.mu.Lock()
	s.counts[keyID]++
	s.mu.Unlock()
}

// Stats: admissions reported, reports received from peers, admissions
// charged from them.
func (s *RateShare) Stats() (sent, received, charged uint64) {
	return s.sent.Load(), s.received.Load(), s.charged.Load()
}

// Run subscribes to the peers' reports and publishes this verifier's every
// period until ctx ends.
func (s *RateShare) Run(ctx context.Context) error {
	stop, err := s.tr.SubscribeRates(s.receive)
	if err != nil {
		return fmt.Errorf("verifier: rate share: %w", err)
	}
	defer stop()
	t := time.NewTicker(s.period)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.Flush(ctx); err != nil {
			if !failing {
				s.log.Warn("rate-limit report not published; limits are local until the bus is back", "err", err)
			}
			failing = true
		} else {
			failing = false
		}
	}
}

// Flush publishes the admissions counted since the last report. Counts
// that fail to publish are dropped: peers then under-charge, as if the
// verifiers were not sharing for one period.
func (s *RateShare) Flush(ctx context.Context) error {
	s.mu.Lock()
	if len(s.counts) == 0 {
		s.mu.Unlock()
		return nil
	}
	counts := s.counts
	s.counts = make(map[string]uint32, len(counts))
	s.mu.Unlock()
	b := binary.AppendUvarint(nil, uint64(len(s.id)))
	b = append(b, s.id...)
	var total uint64
	for k, n := range counts {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(n))
		total += uint64(n)
	}
	if err := s.tr.PublishRates(ctx, b); err != nil {
		return err
	}
	s.sent.Add(total)
	return nil
}

func (s *RateShare) receive(data []byte) {
	str := func() (string, bool) {
		l, k := binary.Uvarint(data)
		if k <= 0 || uint64(len(data)-k) < l {
			return "", false
		}
		v := string(data[k : k+int(l)])
		data = data[k+int(l):]
		return v, true
	}
	from, ok := str()
	if !ok || from == s.id {
		return
	}
	s.received.Add(1)
	now := s.now()
	for len(data) > 0 {
		k, ok := str()
		if !ok {
			return
		}
		n, w := binary.Uvarint(data)
		if w <= 0 {
			return
		}
		data = data[w:]
		s.charge(k, n, now)
	}
}

// charge adds n admissions to key id's bucket.
func (s *RateShare) charge(id string, n uint64, now int64) {
	slot := s.tbl.SlotByID(id)
	if slot == nil {
		return
	}
	rec := slot.Record()
	if rec == nil || rec.RateInterval <= 0 || n == 0 {
		return
	}
	limit := now + 2*rec.RateInterval*int64(max(rec.Burst, 1))
	add := rec.RateInterval * int64(min(n, 1<<31))
	for {
		old := slot.RateTAT.Load()
		next := min(max(old, now)+add, max(old, limit))
		if slot.RateTAT.CompareAndSwap(old, next) {
			break
		}
	}
	s.charged.Add(n)
}

// natsRates carries rate reports on core NATS (no stream: a lost report
// only means one period of local limits).
type natsRates struct {
	nc      *nats.Conn
	subject string
}

// NATSRateTransport is the rate-report transport on nc, subject
// <prefix>.ratelimits.
func NATSRateTransport(nc *nats.Conn, prefix string) RateTransport {
	return &natsRates{nc: nc, subject: prefix + ".ratelimits"}
}

func (t *natsRates) PublishRates(_ context.Context, data []byte) error {
	return t.nc.Publish(t.subject, data)
}

func (t *natsRates) SubscribeRates(fn func([]byte)) (func(), error) {
	sub, err := t.nc.Subscribe(t.subject, func(m *nats.Msg) { fn(m.Data) })
	if err != nil {
		return nil, err
	}
	return func() { _ = sub.Unsubscribe() }, nil
}
