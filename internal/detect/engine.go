package detect

import (
	"errors"
	"fmt"
	"hash/fnv"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// Sink receives every decision the engine makes, in enforce and dry-run
// mode alike (Decision.Mode says which). It is called from the goroutine
// that calls Process and must not block for long: buffer and publish
// elsewhere. The decision is the sink's to keep.
type Sink interface {
	Decide(d *keymeterv1.Decision)
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(*keymeterv1.Decision)

func (f SinkFunc) Decide(d *keymeterv1.Decision) { f(d) }

// BaselineSource warm-starts a group's baseline, the usual number of
// matching events per window, typically from the store's rollups. It is
// called once when a group is created, on the hot path: answer from memory.
type BaselineSource interface {
	Baseline(ruleID, group string) (perWindow float64, ok bool)
}

// BaselineFunc adapts a function to BaselineSource.
type BaselineFunc func(ruleID, group string) (float64, bool)

func (f BaselineFunc) Baseline(ruleID, group string) (float64, bool) { return f(ruleID, group) }

// Allowlist names keys and client networks that rules never act on: their
// decisions are recorded in dry-run mode only.
type Allowlist struct {
	Keys  []string
	CIDRs []string
}

// Config configures an Engine.
type Config struct {
	Sink      Sink           // required
	Baselines BaselineSource // optional: without it, baselines start at the rule's default
	Allowlist Allowlist
	// MaxRevocationsPerHour is the circuit breaker's budget per rule: the
	// distinct keys one rule may suspend or revoke within BreakerWindow of
	// event time. Beyond it the rule's suspensions and revocations are
	// recorded in dry-run, and one alert lists the keys. The rule re-arms
	// by itself once the window has passed. Zero means 10; negative
	// disables the breaker.
	MaxRevocationsPerHour int
	// MaxRevocationsGlobal is the budget across all rules, in distinct
	// keys per BreakerWindow. Zero means 20; negative disables it.
	MaxRevocationsGlobal int
	// BreakerWindow is the breaker's rolling window; zero means 1h.
	BreakerWindow time.Duration
	// Corroboration is how recent another rule's decision on the same
	// key must be to corroborate a suspend or revoke; zero means 1h.
	Corroboration time.Duration
	// Warmup: decisions are not made during this much event time from
	// the first event; windows and profiles learn meanwhile.
	Warmup time.Duration
	// Profiles tunes the learned per-key and per-network profiles.
	Profiles ProfileConfig
	// KeyKind returns a key's kind (server, browser, mobile, batch) for
	// key_kind in rules; nil or "" means server.
	KeyKind func(keyID string) string
	Metrics *Metrics // optional
	Logger  *slog.Logger
}

// Validate reports every problem of the configuration; it changes nothing.
func (c *Config) Validate() error {
	var errs []error
	if c.Sink == nil {
		errs = append(errs, errors.New("detect: Config.Sink is required"))
	}
	for _, s := range c.Allowlist.CIDRs {
		if _, err := parsePrefix(s); err != nil {
			errs = append(errs, fmt.Errorf("detect: allowlist: %w", err))
		}
	}
	return errors.Join(errs...)
}

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR or IP %q (accepted: 203.0.113.0/24, 2001:db8::/32, 198.51.100.7)", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Engine evaluates a rule set over events in event time. Process is not
// safe for concurrent use: run one engine per partition of the event
// stream. Swap, Stats and ResetBreaker may be called from any goroutine.
type Engine struct {
	cfg        Config
	log        *slog.Logger
	set        *RuleSet
	states     []*ruleState
	tables     []*table
	pending    atomic.Pointer[RuleSet]
	current    atomic.Pointer[RuleSet]
	published  time.Time
	pubAt      uint64 // e.processed at the last publication
	sc         scratch
	touch      int64 // keeps the prefetching reads of phase 2 from being optimised away
	resets     atomic.Pointer[[]string]
	overrides  atomic.Pointer[map[string]keymeterv1.Mode] // rule id → mode set by an operator (override.go)
	mu         sync.Mutex                                 // serialises resets
	act        activation
	view       aggView
	keyBuf     []byte
	hv         []uint64
	sv         []int64
	seed       maphash.Seed
	watermark  int64
	processed  uint64
	badTime    uint64
	allowKeys  map[string]bool
	allowNets  []netip.Prefix
	stats      atomic.Pointer[Stats]
	maxRevokes int
	maxGlobal  int
	bkWindow   int64
	corrWindow int64
	prof       *profiles
	sh         *shared
	needProf   bool  // a rule in force reads profiles
	warmupEnd  int64 // 0 until the first event
	extSig     atomic.Pointer[[]extSignal]
	lastSweep  int64
	quiet      bool // Learn: no decisions
}

// Learn runs evs through the rules' windows and the profiles without
// making decisions: a warm start from stored history. Call it from the
// goroutine that calls Process, before the live stream.
func (e *Engine) Learn(evs []event.Event) {
	e.quiet = true
	defer func() { e.quiet = false }()
	e.ProcessBatch(evs)
}

// ruleState is one rule's mutable state: its groups and counters.
type ruleState struct {
	r        *compiledRule
	tab      *table // nil when the rule is disabled
	slot     int    // the rule's column in its table's rows
	used     int    // groups in use
	tripped  bool
	bk       breakerState
	supp     map[string][]int64 // per group key: per action suppression end, held-until, fired time
	evalErrs uint64
	c        RuleStats
	pub      published
}

// RuleStats are one rule's counters since it was loaded (or since its
// window state was last carried over).
type RuleStats struct {
	ID          string            `json:"id"`
	Version     uint32            `json:"version"`
	Mode        string            `json:"mode"`                    // configured mode
	Effective   string            `json:"effective_mode"`          // mode in force: the override, dry_run once the breaker tripped
	Override    string            `json:"mode_override,omitempty"` // mode set by an operator (PUT /v1/rules/{id}/mode)
	Evaluations uint64            `json:"evaluations"`
	Matches     uint64            `json:"matches"`
	Groups      int               `json:"groups"`
	Evictions   uint64            `json:"evictions"` // groups dropped because the cap was reached
	Expired     uint64            `json:"expired"`   // idle groups dropped
	Late        uint64            `json:"late"`
	EvalErrors  uint64            `json:"eval_errors"`
	Firings     map[string]uint64 `json:"firings"` // by mode: enforce, dry_run
	Actions     map[string]uint64 `json:"actions"` // "<mode>/<action>" → decisions
	Tripped     bool              `json:"breaker_tripped"`
}

// RuleStatuses is the rules' counters for GET /v1/rules (api.RuleLister).
func (e *Engine) RuleStatuses() any { return e.withOverrides(e.Stats().Rules) }

// Stats is a snapshot of the engine's counters.
type Stats struct {
	Events    uint64
	BadTime   uint64 // events skipped for a zero or pre-1970 time
	Watermark time.Time
	Rules     []RuleStats
	Profiles  ProfileStats
}

// New builds an engine running set (which may be nil: no rules yet).
func New(cfg Config, set *RuleSet) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, seed: maphash.MakeSeed(),
		allowKeys: map[string]bool{}, keyBuf: make([]byte, 0, 128)}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	e.maxRevokes = cfg.MaxRevocationsPerHour
	if e.maxRevokes == 0 {
		e.maxRevokes = 10
	}
	e.maxGlobal = cfg.MaxRevocationsGlobal
	if e.maxGlobal == 0 {
		e.maxGlobal = 20
	}
	e.bkWindow = int64(cfg.BreakerWindow)
	if e.bkWindow == 0 {
		e.bkWindow = int64(time.Hour)
	}
	e.corrWindow = int64(cfg.Corroboration)
	if e.corrWindow == 0 {
		e.corrWindow = int64(time.Hour)
	}
	if !cfg.Profiles.Disabled {
		e.prof = newProfiles(cfg.Profiles, e.seed)
	}
	e.sh = newShared()
	e.act.kind = cfg.KeyKind
	for _, k := range cfg.Allowlist.Keys {
		e.allowKeys[k] = true
	}
	for _, s := range cfg.Allowlist.CIDRs {
		p, _ := parsePrefix(s)
		e.allowNets = append(e.allowNets, p)
	}
	if set == nil {
		set = &RuleSet{}
	}
	e.apply(set)
	e.publishStats()
	return e, nil
}

// Swap replaces the rule set atomically: the engine switches between two
// events, on the goroutine that calls Process. Rules whose id, version and
// aggregate are unchanged keep their windows, suppressions and breaker.
func (e *Engine) Swap(set *RuleSet) { e.pending.Store(set) }

// RuleSet returns the rule set in force (as of the last Process call).
func (e *Engine) RuleSet() *RuleSet { return e.current.Load() }

// ResetBreaker re-arms a tripped rule: it acts again in its configured mode.
func (e *Engine) ResetBreaker(ruleID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ids []string
	if p := e.resets.Load(); p != nil {
		ids = append(ids, *p...)
	}
	ids = append(ids, ruleID)
	e.resets.Store(&ids)
}

func (e *Engine) allowlisted(ev *event.Event) bool {
	if ev.KeyID != "" && e.allowKeys[ev.KeyID] {
		return true
	}
	if len(e.allowNets) > 0 {
		if a, err := netip.ParseAddr(ev.ClientIP); err == nil {
			a = a.Unmap()
			for _, p := range e.allowNets {
				if p.Contains(a) {
					return true
				}
			}
		}
	}
	return false
}

func (e *Engine) emit(s *ruleState, d *keymeterv1.Decision) {
	d.Group = EscapeGroup(d.Group)
	m := ModeName(d.Mode)
	s.c.Firings[m]++
	s.c.Actions[m+"/"+ActionName(d.Action)]++
	if e.cfg.Metrics != nil {
		e.cfg.Metrics.Firings.WithLabelValues(d.RuleId, m, ActionName(d.Action)).Inc()
	}
	e.cfg.Sink.Decide(d)
}

// ReservedGroup is the group of rule-mode overrides on the decisions log
// (detector.RuleModeGroup); no detection decision carries it.
const ReservedGroup = "keymeter.rule_mode"

// EscapeGroup is the group a decision carries for a group value: a value
// equal to ReservedGroup, which comes from client data (a user agent, a
// route, a host), gets a leading backslash, and so does a value that already
// starts with one (the mapping stays one-to-one), so that no client can make
// the engine emit what reads as a rule-mode override.
func EscapeGroup(g string) string {
	if g == ReservedGroup || strings.HasPrefix(g, `\`) {
		return `\` + g
	}
	return g
}

// decisionID is deterministic (unlike the engine's seeded index hash) so
// that a replay produces the same ids and the store can deduplicate.
func decisionID(r *compiledRule, group string, t int64, what string) string {
	h := fnv.New64a()
	h.Write([]byte(group))
	return r.ID + "/" + strconv.FormatUint(uint64(r.Version), 10) + "/" + strconv.FormatUint(h.Sum64(), 36) + "/" +
		strconv.FormatInt(t, 36) + "/" + what
}

func (e *Engine) applyResets() {
	e.mu.Lock()
	p := e.resets.Swap(nil)
	e.mu.Unlock()
	if p == nil {
		return
	}
	for _, id := range *p {
		for _, s := range e.states {
			if s.r.ID == id {
				s.tripped, s.bk = false, breakerState{}
			}
		}
	}
}

// Flush publishes the counters (Stats, metrics) now rather than at the next
// periodic publication. Call it from the goroutine that calls Process.
func (e *Engine) Flush() { e.publishStats() }

// Stats returns the counters as of the last publication (every second or
// 65536 events while events flow, and on Flush). Safe from any goroutine.
func (e *Engine) Stats() Stats {
	if p := e.stats.Load(); p != nil {
		return *p
	}
	return Stats{}
}

func (e *Engine) publishStats() {
	e.published, e.pubAt = time.Now(), e.processed
	st := &Stats{Events: e.processed, BadTime: e.badTime, Watermark: time.Unix(0, e.watermark).UTC()}
	if e.prof != nil {
		st.Profiles = ProfileStats{Keys: e.prof.live - e.prof.nets, Networks: e.prof.nets, Evictions: e.prof.evictions}
	}
	for _, s := range e.states {
		c := s.c
		c.ID, c.Version, c.Mode = s.r.ID, s.r.Version, s.r.Mode
		c.Effective = ModeName(e.ruleMode(s.r))
		c.Override = e.overrideName(s.r.ID)
		if s.tripped && c.Effective == "enforce" {
			c.Effective = "dry_run"
		}
		c.Groups = s.used
		c.Tripped = s.tripped
		c.EvalErrors = s.evalErrs
		c.Firings = cloneMap(s.c.Firings)
		c.Actions = cloneMap(s.c.Actions)
		st.Rules = append(st.Rules, c)
	}
	if m := e.cfg.Metrics; m != nil {
		for _, s := range e.states {
			m.add(s)
		}
	}
	e.stats.Store(st)
}

func cloneMap(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
