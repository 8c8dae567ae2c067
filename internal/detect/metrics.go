package detect

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the detector's Prometheus metrics. One Metrics may be shared
// by several engines (one per partition): counters are added as deltas.
type Metrics struct {
	Evaluations *prometheus.CounterVec // rule
	Matches     *prometheus.CounterVec // rule
	Firings     *prometheus.CounterVec // rule, mode, action
	Evictions   *prometheus.CounterVec // rule
	Expired     *prometheus.CounterVec // rule
	EvalErrors  *prometheus.CounterVec // rule
	Groups      *prometheus.GaugeVec   // rule
	Tripped     *prometheus.GaugeVec   // rule: 1 while the circuit breaker holds the rule in dry-run
	Rules       prometheus.Gauge
	Reloads     *prometheus.CounterVec // result: ok, error
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Evaluations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "keymeter", Subsystem: "detect", Name: "evaluations_total", Help: "Events evaluated by a rule's match expression."}, []string{"rule"}),
		Matches:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "keymeter", Subsystem: "detect", Name: "matches_total", Help: "Events a rule's match expression accepted."}, []string{"rule"}),
		Firings:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "keymeter", Subsystem: "detect", Name: "decisions_total", Help: "Decisions by rule, mode and action."}, []string{"rule", "mode", "action"}),
		Evictions:   prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "keymeter", Subsystem: "detect", Name: "group_evictions_total", Help: "Groups dropped because the rule's group cap was reached."}, []string{"rule"}),
		Expired:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "keymeter", Subsystem: "detect", Name: "group_expirations_total", Help: "Idle groups dropped."}, []string{"rule"}),
		EvalErrors:  prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "keymeter", Subsystem: "detect", Name: "eval_errors_total", Help: "CEL evaluation errors (counted as false)."}, []string{"rule"}),
		Groups:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "keymeter", Subsystem: "detect", Name: "groups", Help: "Active groups per rule."}, []string{"rule"}),
		Tripped:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "keymeter", Subsystem: "detect", Name: "breaker_tripped", Help: "1 while the rule's circuit breaker holds it in dry-run."}, []string{"rule"}),
		Rules:       prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "keymeter", Subsystem: "detect", Name: "rules", Help: "Rules in the loaded set."}),
		Reloads:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "keymeter", Subsystem: "detect", Name: "reloads_total", Help: "Rule set reloads by result."}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.Evaluations, m.Matches, m.Firings, m.Evictions, m.Expired, m.EvalErrors, m.Groups, m.Tripped, m.Rules, m.Reloads)
	}
	return m
}

func (m *Metrics) setRules(set *RuleSet) { m.Rules.Set(float64(set.Len())) }

// published remembers what a rule state last reported, so metrics get deltas.
type published struct {
	evals, matches, expired, errs uint64
	groups                        int
}

func (m *Metrics) add(s *ruleState) {
	id := s.r.ID
	p := &s.pub
	m.Evaluations.WithLabelValues(id).Add(float64(s.c.Evaluations - p.evals))
	m.Matches.WithLabelValues(id).Add(float64(s.c.Matches - p.matches))
	m.Expired.WithLabelValues(id).Add(float64(s.c.Expired - p.expired))
	m.EvalErrors.WithLabelValues(id).Add(float64(s.evalErrs - p.errs))
	m.Groups.WithLabelValues(id).Add(float64(s.used - p.groups))
	if s.tripped {
		m.Tripped.WithLabelValues(id).Set(1)
	} else {
		m.Tripped.WithLabelValues(id).Set(0)
	}
	*p = published{evals: s.c.Evaluations, matches: s.c.Matches, expired: s.c.Expired, errs: s.evalErrs, groups: s.used}
}
