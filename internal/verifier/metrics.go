package verifier

import (
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/httpserve"
	"github.com/keymeter/keymeter/internal/keys"
)

// Metrics are the verifier's Prometheus metrics. Per-outcome counters are
// resolved once so that counting a decision is one atomic add.
type Metrics struct {
	Registry  *prometheus.Registry
	decisions [event.OutcomeBlockedIP + 1]prometheus.Counter
	verify    prometheus.Histogram
	upstream  prometheus.Histogram
	// tunnels are the server's upgraded connections (set by NewServer).
	tunnels atomic.Pointer[tunnels]
}

// NewMetrics registers the verifier's metrics with reg, the process's one
// registry (nil: a registry of its own with the Go and process
// collectors). em may be nil (no emission).
func NewMetrics(reg *prometheus.Registry, tbl *keys.Table, em *Emitter) (*Metrics, error) {
	if reg == nil {
		reg = httpserve.NewRegistry()
	}
	m := &Metrics{Registry: reg}
	dec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keymeter_verifier_decisions_total", Help: "Verification decisions by outcome.",
	}, []string{"outcome"})
	for _, o := range event.Outcomes() {
		m.decisions[o] = dec.WithLabelValues(o.String())
	}
	m.verify = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "keymeter_verifier_verify_seconds",
		Help:    "Time spent in the decision function (key parse, hash, lookup, checks, bucket).",
		Buckets: []float64{100e-9, 200e-9, 500e-9, 1e-6, 2e-6, 5e-6, 10e-6, 50e-6, 100e-6, 1e-3},
	})
	m.upstream = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "keymeter_verifier_upstream_seconds",
		Help:    "Upstream response time in proxy mode.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
	if err := registerAll(reg, dec, m.verify, m.upstream,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keymeter_verifier_keys", Help: "Keys in the key table."},
			func() float64 { return float64(tbl.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keymeter_verifier_key_table_loaded", Help: "1 once the key table snapshot is loaded."},
			func() float64 { return b2f(tbl.Loaded()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_key_updates_total", Help: "Key-state updates applied."},
			func() float64 { return float64(tbl.Applied()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_key_updates_invalid_total", Help: "Key-state updates skipped as undecodable or invalid."},
			func() float64 { return float64(tbl.Invalid()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keymeter_verifier_tunnels_open", Help: "Upgraded (WebSocket) connections open through the proxy."},
			func() float64 {
				if t := m.tunnels.Load(); t != nil {
					return float64(t.count())
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_tunnels_closed_total", Help: "Upgraded connections closed because their key was revoked, suspended, expired or deleted."},
			func() float64 {
				if t := m.tunnels.Load(); t != nil {
					return float64(t.closed.Load())
				}
				return 0
			}),
	); err != nil {
		return nil, err
	}
	if em != nil {
		stat := func(f func(EmitterStats) float64) func() float64 { return func() float64 { return f(em.Stats()) } }
		if err := registerAll(reg,
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_events_emitted_total", Help: "Usage events accepted for emission."},
				stat(func(s EmitterStats) float64 { return float64(s.Emitted) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_events_published_total", Help: "Usage events acknowledged by the bus."},
				stat(func(s EmitterStats) float64 { return float64(s.Published) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_events_spooled_total", Help: "Usage events written to the disk spool."},
				stat(func(s EmitterStats) float64 { return float64(s.Spooled) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_events_replayed_total", Help: "Usage events published from the disk spool."},
				stat(func(s EmitterStats) float64 { return float64(s.Replayed) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_events_dropped_total", Help: "Usage events lost because the queue or the spool was full."},
				stat(func(s EmitterStats) float64 { return float64(s.Dropped) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_events_deadlettered_total", Help: "Usage events set aside in the data directory's deadletter folder: too large for the bus even alone."},
				stat(func(s EmitterStats) float64 { return float64(s.DeadLettered) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_batches_split_total", Help: "Event batches the bus refused as too large, published split in halves."},
				stat(func(s EmitterStats) float64 { return float64(s.Split) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keymeter_verifier_spool_events", Help: "Usage events waiting in the disk spool."},
				stat(func(s EmitterStats) float64 { return float64(s.SpoolEvents) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keymeter_verifier_spool_bytes", Help: "Bytes in the disk spool."},
				stat(func(s EmitterStats) float64 { return float64(s.SpoolBytes) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymeter_verifier_durable_log_errors_total", Help: "Durable event log write, fsync and reopen errors (events are not crash-safe while the log is failed)."},
				stat(func(s EmitterStats) float64 { return float64(s.LogErrors) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keymeter_verifier_bus_up", Help: "1 while the bus takes event batches, 0 while spooling."},
				stat(func(s EmitterStats) float64 { return b2f(s.BusUp) })),
		); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// registerAll registers every collector with reg; a second verifier on the
// same registry is an error, not a panic.
func registerAll(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("verifier metrics: %w", err)
		}
	}
	return nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
