package verifier

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/keys"
)

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
// late cannot lock a key out for longer than two full windows. A report
// older than staleAfter (a backlog a reconnected subscriber is handed, or
// clocks far apart) is dropped: its admissions have left the buckets.
//
// The reports travel on the bus's RateTransport: core NATS, or a Kafka
// topic of their own. A period's counts are split into reports that fit
// the transport's MaxReportBytes, each decodable alone. The counts kept
// between reports hold only keys of the key table with a rate limit
// (Note is called for admitted requests of such keys), at most one entry
// per key admitted in the period: bounded by the table and by the
// admissions of one period, whatever keys clients send. The bus's latency adds to the period: the overshoot
// grows with what peers admit during period + latency.
type RateShare struct {
	tbl        *keys.Table
	tr         bus.RateTransport
	id         string
	period     time.Duration
	staleAfter time.Duration
	log        *slog.Logger

	now func() int64 // the clock reports are stamped and charged at (tests simulate one)

	mu     sync.Mutex
	counts map[string]uint32

	sent, received, charged   atomic.Uint64 // admissions reported, peer reports taken, admissions charged
	published, stale, invalid atomic.Uint64 // reports published, peer reports dropped as stale or undecodable
	failed                    atomic.Uint64 // reports that failed to publish
	age                       prometheus.Histogram
}

// NewRateShare shares the rate limits of tbl's keys as verifier id, every
// period (default 50ms), over tr (a bus's RateTransport).
func NewRateShare(tbl *keys.Table, tr bus.RateTransport, id string, period time.Duration, log *slog.Logger) (*RateShare, error) {
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
		staleAfter: max(5*period, 250*time.Millisecond),
		age: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keymeter_verifier_rate_report_age_seconds",
			Help:    "Age of the other verifiers' rate-limit reports on arrival: the bus's latency plus the clocks' difference.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
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
// period until ctx ends. A bus that fails is retried every period: the
// limits are meanwhile local (or shared one way).
func (s *RateShare) Run(ctx context.Context) error {
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	t := time.NewTicker(s.period)
	defer t.Stop()
	wait := max(4*s.period, 2*time.Second) // bounds one bus call
	var subFailing, pubFailing bool
	for ctx.Err() == nil {
		if stop == nil {
			sctx, cancel := context.WithTimeout(ctx, wait)
			var err error
			stop, err = s.tr.SubscribeRates(sctx, s.receive)
			cancel()
			s.logTransition(&subFailing, err, "not receiving rate-limit reports; peers' admissions are not charged until the bus is back")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		fctx, cancel := context.WithTimeout(ctx, wait)
		err := s.Flush(fctx)
		cancel()
		s.logTransition(&pubFailing, err, "rate-limit report not published; peers do not see this verifier's admissions until the bus is back")
	}
	return nil
}

// logTransition logs err once when a call starts failing and once when it
// works again, not every period.
func (s *RateShare) logTransition(failing *bool, err error, msg string) {
	switch {
	case err != nil && !*failing && !errors.Is(err, context.Canceled):
		s.log.Warn(msg, "err", err)
		*failing = true
	case err == nil && *failing:
		s.log.Info("rate-limit sharing works again")
		*failing = false
	}
}

// Flush publishes the admissions counted since the last report, split
// into reports of at most the transport's MaxReportBytes, each carrying
// the verifier's id and whole entries, so that each decodes on its own: a
// report lost (or refused) loses only its keys' counts. Counts that fail
// to publish are dropped: peers then under-charge, as if the verifiers
// were not sharing for one period. The error is the first failure's.
func (s *RateShare) Flush(ctx context.Context) error {
	s.mu.Lock()
	if len(s.counts) == 0 {
		s.mu.Unlock()
		return nil
	}
	counts := s.counts
	s.counts = make(map[string]uint32, len(counts))
	s.mu.Unlock()
	limit := s.tr.MaxReportBytes()
	if limit <= 0 {
		limit = defaultMaxReport
	}
	head := binary.AppendUvarint(nil, uint64(len(s.id)))
	head = append(head, s.id...)
	at := time.Unix(0, s.now())
	var failed, reports int
	var firstErr error
	b := append(make([]byte, 0, min(limit, len(head)+len(counts)*40)), head...)
	var total uint64
	publish := func() {
		reports++
		if err := s.tr.PublishRates(ctx, bus.RateReport{Data: b, Time: at}); err != nil {
			s.failed.Add(1)
			failed++
			firstErr = cmp.Or(firstErr, err)
		} else {
			s.published.Add(1)
			s.sent.Add(total)
		}
		b = append(make([]byte, 0, min(limit, cap(b))), head...) // the transport may keep the last
		total = 0
	}
	for k, n := range counts {
		if ctx.Err() != nil {
			break
		}
		if len(b) > len(head) && len(b)+entryBytes(k, n) > limit {
			publish()
		}
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(n))
		total += uint64(n)
	}
	if len(b) > len(head) && ctx.Err() == nil {
		publish()
	}
	if firstErr == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if firstErr != nil {
		return fmt.Errorf("verifier: %d of %d rate reports not published: %w", failed, reports, firstErr)
	}
	return nil
}

// defaultMaxReport is the report size used with a transport that states
// no limit.
const defaultMaxReport = 512 << 10

// entryBytes is the encoded size of one key's count in a report.
func entryBytes(k string, n uint32) int {
	var tmp [binary.MaxVarintLen64]byte
	return binary.PutUvarint(tmp[:], uint64(len(k))) + len(k) + binary.PutUvarint(tmp[:], uint64(n))
}

// receive charges a peer's report; this verifier's own are skipped.
func (s *RateShare) receive(r bus.RateReport) {
	from, rest, ok := reportString(r.Data)
	if !ok || !eachCount(rest, nil) {
		s.invalid.Add(1)
		return
	}
	if from == s.id {
		return
	}
	now := s.now()
	if !r.Time.IsZero() {
		age := time.Duration(now - r.Time.UnixNano())
		if age > s.staleAfter || age < -s.staleAfter {
			s.stale.Add(1)
			return
		}
		s.age.Observe(max(age, 0).Seconds())
	}
	s.received.Add(1)
	eachCount(rest, func(k string, n uint64) { s.charge(k, n, now) })
}

// reportString decodes a length-prefixed string at the start of data.
func reportString(data []byte) (v string, rest []byte, ok bool) {
	l, k := binary.Uvarint(data)
	if k <= 0 || uint64(len(data)-k) < l {
		return "", nil, false
	}
	return string(data[k : k+int(l)]), data[k+int(l):], true
}

// eachCount calls fn (if not nil) with every key and count of a report's
// body, and reports whether the whole body decoded.
func eachCount(data []byte, fn func(key string, n uint64)) bool {
	for len(data) > 0 {
		k, rest, ok := reportString(data)
		if !ok {
			return false
		}
		n, w := binary.Uvarint(rest)
		if w <= 0 {
			return false
		}
		data = rest[w:]
		if fn != nil {
			fn(k, n)
		}
	}
	return true
}

// charge adds n admissions to key id's bucket: its TAT moves n intervals
// later, no further than twice the bucket's capacity ahead of now, and
// never backwards. The arithmetic saturates, so that any count a peer
// sends (a malformed or hostile report included) only ever tightens the
// limit.
func (s *RateShare) charge(id string, n uint64, now int64) {
	slot := s.tbl.SlotByID(id)
	if slot == nil {
		return
	}
	rec := slot.Record()
	if rec == nil || rec.RateInterval <= 0 || n == 0 {
		return
	}
	iv := rec.RateInterval
	window := satMul(satMul(iv, int64(max(rec.Burst, 1))), 2)
	// The TAT stays an interval short of overflowing: the limiter adds one.
	limit := min(satAdd(now, window), math.MaxInt64-iv)
	add := satMul(iv, int64(min(n, math.MaxInt64)))
	for {
		old := slot.RateTAT.Load()
		next := max(old, min(satAdd(max(old, now), add), limit))
		if next == old || slot.RateTAT.CompareAndSwap(old, next) {
			break
		}
	}
	s.charged.Add(n)
}

// satAdd is a+b for a, b ≥ 0, math.MaxInt64 where that overflows.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// satMul is a×b for a, b ≥ 0, math.MaxInt64 where that overflows.
func satMul(a, b int64) int64 {
	if b != 0 && a > math.MaxInt64/b {
		return math.MaxInt64
	}
	return a * b
}

// register adds the sharing's counters to reg.
func (s *RateShare) register(reg prometheus.Registerer) error {
	c := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	return registerAll(reg, s.age,
		c("keymeter_verifier_rate_reports_sent_total", "Rate-limit reports published to the other verifiers (a period's counts are split into reports that fit the bus's message size).", &s.published),
		c("keymeter_verifier_rate_reports_failed_total", "Rate-limit reports that failed to publish: the other verifiers do not charge their admissions.", &s.failed),
		c("keymeter_verifier_rate_reports_received_total", "Rate-limit reports of other verifiers charged.", &s.received),
		c("keymeter_verifier_rate_reports_stale_total", "Rate-limit reports of other verifiers dropped as too old (or clocks too far apart).", &s.stale),
		c("keymeter_verifier_rate_reports_invalid_total", "Rate-limit reports dropped as undecodable.", &s.invalid),
		c("keymeter_verifier_rate_admissions_sent_total", "Admissions of rate-limited keys reported to the other verifiers.", &s.sent),
		c("keymeter_verifier_rate_admissions_charged_total", "Admissions reported by other verifiers charged to the local buckets.", &s.charged),
	)
}
