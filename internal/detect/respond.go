package detect

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// The response: graduated (a rule lists its actions from alert up to
// revoke, each with its own condition), corroborated (suspend and revoke
// wait for a second, independent signal), suppressed per (group, action)
// (an action never repeats inside its own suppression period, whatever
// the others do), and bounded by a circuit breaker that counts distinct
// keys over a rolling window, per rule and across rules.

// Per group, s.supp holds 3 int64 per action: the end of its suppression,
// the end of the period in which a held (uncorroborated) action is not
// reported again, and when it last fired (for the escalation trail).
const (
	suppEnd = iota
	suppHeld
	suppFired
	suppN
)

// recheck is how soon an action held for corroboration is looked at again.
const recheck = int64(time.Minute)

func (s *ruleState) suppSlot(key string) []int64 {
	st := s.supp[key]
	if st == nil {
		if s.supp == nil {
			s.supp = map[string][]int64{}
		}
		st = make([]int64, suppN*len(s.r.actions))
		s.supp[strings.Clone(key)] = st
	}
	return st
}

// refreshSupp rebuilds the group's suppression mask from s.supp as of t.
func (s *ruleState) refreshSupp(g *group, key string, t int64) {
	st := s.supp[key]
	g.firedMask, g.suppressUntil = 0, 0
	if st == nil {
		return
	}
	live := false
	for i := range s.r.actions {
		if end := st[suppN*i+suppEnd]; end > t {
			g.firedMask |= 1 << i
			if g.suppressUntil == 0 || end < g.suppressUntil {
				g.suppressUntil = end
			}
		}
		if st[suppN*i+suppEnd] > t || st[suppN*i+suppHeld] > t {
			live = true
		}
	}
	if !live {
		delete(s.supp, key)
	}
}

func (s *ruleState) suppress(g *group, key string, i int, end int64) {
	st := s.suppSlot(key)
	st[suppN*i+suppEnd] = end
	g.firedMask |= 1 << i
	if g.suppressUntil == 0 || end < g.suppressUntil {
		g.suppressUntil = end
	}
}

// actionSuppress is action i's own suppression period.
func (r *compiledRule) actionSuppress(i int) int64 {
	a := &r.actions[i].spec
	d := r.suppress
	if a.Suppress > 0 {
		d = int64(a.Suppress)
	}
	return max(d, int64(a.Duration))
}

// Default durations: throttles and suspensions expire.
const (
	defaultThrottle = 15 * time.Minute
	defaultSuspend  = 24 * time.Hour
)

// keySignals are the last rules that fired on one key: the corroboration
// a suspend or revoke needs.
type keySignals struct {
	rule [4]string
	at   [4]int64
}

func (k *keySignals) add(rule string, t int64) {
	for i := range k.rule {
		if k.rule[i] == rule {
			k.at[i] = max(k.at[i], t)
			return
		}
	}
	old := 0
	for i := range k.at {
		if k.at[i] < k.at[old] {
			old = i
		}
	}
	k.rule[old], k.at[old] = rule, t
}

// other returns a rule other than rule that fired on the key since since.
func (k *keySignals) other(rule string, since int64) string {
	for i := range k.rule {
		if k.rule[i] != "" && k.rule[i] != rule && k.at[i] >= since {
			return k.rule[i]
		}
	}
	return ""
}

type extSignal struct{ key, source string }

// Corroborate records an outside signal about a key (a leak report, a
// person's judgement): for the corroboration window it lets the rules'
// suspend and revoke actions on that key proceed. Safe from any goroutine;
// it takes effect at the next Process call.
func (e *Engine) Corroborate(keyID, source string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var l []extSignal
	if p := e.extSig.Load(); p != nil {
		l = append(l, *p...)
	}
	l = append(l, extSignal{keyID, source})
	e.extSig.Store(&l)
}

func (e *Engine) applyExtSignals() {
	e.mu.Lock()
	p := e.extSig.Swap(nil)
	e.mu.Unlock()
	if p == nil {
		return
	}
	for _, x := range *p {
		e.signal(x.key, "external:"+x.source, max(e.watermark, 1))
	}
}

func (e *Engine) signal(key, rule string, t int64) {
	if key == "" {
		return
	}
	e.sh.mu.Lock()
	defer e.sh.mu.Unlock()
	k := e.sh.signals[key]
	if k == nil {
		k = &keySignals{}
		e.sh.signals[strings.Clone(key)] = k
	}
	k.add(rule, t)
}

// breakerState counts the distinct keys a rule (or all rules) suspended
// or revoked within the rolling window.
type breakerState struct {
	keys      []string
	at        []int64
	trippedAt int64
}

func (b *breakerState) prune(since int64) {
	j := 0
	for i := range b.keys {
		if b.at[i] >= since {
			b.keys[j], b.at[j] = b.keys[i], b.at[i]
			j++
		}
	}
	b.keys, b.at = b.keys[:j], b.at[:j]
}

func (b *breakerState) has(key string) bool { return slices.Contains(b.keys, key) }

// breakerAllows reports whether an enforced suspend or revoke of key by s
// stays within the budgets, counting it if so; when it does not, it trips
// (and alerts once per trip with the keys).
func (e *Engine) breakerAllows(s *ruleState, key string, ev *event.Event, t int64) bool {
	e.sh.mu.Lock()
	defer e.sh.mu.Unlock()
	since := t - e.bkWindow
	s.bk.prune(since)
	e.sh.global.prune(since)
	if s.tripped && t-s.bk.trippedAt >= e.bkWindow && len(s.bk.keys) < e.maxRevokes {
		s.tripped = false
		e.log.Info("detect: circuit breaker re-armed", "rule", s.r.ID)
	}
	if e.sh.global.trippedAt != 0 && t-e.sh.global.trippedAt >= e.bkWindow && len(e.sh.global.keys) < e.maxGlobal {
		e.sh.global.trippedAt = 0
		e.log.Info("detect: global circuit breaker re-armed")
	}
	ruleOK := e.maxRevokes < 0 || s.bk.has(key) || len(s.bk.keys) < e.maxRevokes
	globalOK := e.maxGlobal < 0 || e.sh.global.has(key) || len(e.sh.global.keys) < e.maxGlobal
	if ruleOK && globalOK && !s.tripped && e.sh.global.trippedAt == 0 {
		if !s.bk.has(key) {
			s.bk.keys, s.bk.at = append(s.bk.keys, strings.Clone(key)), append(s.bk.at, t)
		}
		if !e.sh.global.has(key) {
			e.sh.global.keys, e.sh.global.at = append(e.sh.global.keys, strings.Clone(key)), append(e.sh.global.at, t)
		}
		return true
	}
	r := s.r
	alert := func(scope string, b *breakerState, limit int) {
		list := slices.Clone(b.keys)
		e.emit(s, &keymeterv1.Decision{
			Id:           decisionID(r, scope, t, "breaker"),
			TimeUnixNano: t, RuleId: r.ID, RuleVersion: r.Version, Severity: "critical",
			Mode: keymeterv1.Mode_MODE_ENFORCE, Action: keymeterv1.Action_ACTION_ALERT,
			Group: scope, Project: strings.Clone(ev.Project), KeyId: "", ClientIp: "",
			Figures: map[string]float64{"keys_in_window": float64(len(list)), "limit": float64(limit),
				"window_seconds": float64(e.bkWindow / 1e9)},
			Reason: fmt.Sprintf("circuit breaker (%s): %d distinct keys suspended or revoked within %s reached the limit of %d; "+
				"further suspensions and revocations are dry-run until the window has passed. Keys: %s; next would be %s",
				scope, len(list), time.Duration(e.bkWindow), limit, strings.Join(list, ", "), key),
		})
		e.log.Warn("detect: circuit breaker tripped", "scope", scope, "rule", r.ID, "limit", limit, "keys", len(list))
	}
	if !ruleOK && !s.tripped {
		s.tripped, s.bk.trippedAt = true, t
		alert("rule "+r.ID, &s.bk, e.maxRevokes)
	}
	if !globalOK && e.sh.global.trippedAt == 0 {
		e.sh.global.trippedAt = t
		alert("all rules", &e.sh.global, e.maxGlobal)
	}
	return false
}

// fire decides what action i of s does for the current group and event.
func (e *Engine) fire(s *ruleState, g *group, i int, ev *event.Event, t int64) {
	r := s.r
	a := &r.actions[i]
	key := e.view.groupKey()
	mode, kind, reason := e.fireMode(r, a, ev)
	strong := kind == keymeterv1.Action_ACTION_REVOKE || kind == keymeterv1.Action_ACTION_SUSPEND
	corroborator, held, quiet := "", false, false
	if strong && a.spec.Corroboration != "none" {
		if corroborator, held, quiet = e.corroboration(s, g, key, i, ev.KeyID, t); quiet {
			return
		}
		if held {
			kind = keymeterv1.Action_ACTION_ALERT
			reason += fmt.Sprintf(" (%s held: needs corroboration by another rule, a leak report or a person within %s)",
				a.spec.Type, time.Duration(e.corrWindow))
			strong = false
		}
	}
	if strong && corroborator != "" {
		reason += " (corroborated by " + corroborator + ")"
	}
	if !held {
		s.suppress(g, key, i, t+r.actionSuppress(i))
	}
	// The escalation trail: weaker actions of this rule that fired on the
	// group within their suppression.
	if st := s.supp[key]; st != nil && !held {
		reason += escalation(r, st, i, t)
		st[suppN*i+suppFired] = t
	}
	if mode == keymeterv1.Mode_MODE_ENFORCE && strong && e.maxRevokes != 0 {
		bkey := ev.KeyID
		if !e.breakerAllows(s, bkey, ev, t) {
			mode = keymeterv1.Mode_MODE_DRY_RUN
			reason += " (circuit breaker tripped)"
		}
	}
	dur := actionDuration(time.Duration(a.spec.Duration), kind)
	what := a.spec.Type
	if held {
		what = "held-" + what
	}
	ip := blockTarget(r, kind, key, ev.ClientIP)
	d := &keymeterv1.Decision{
		Id:             decisionID(r, key, t, what),
		TimeUnixNano:   t,
		RuleId:         r.ID,
		RuleVersion:    r.Version,
		Severity:       r.Severity,
		Mode:           mode,
		Action:         kind,
		Group:          key,
		Project:        strings.Clone(ev.Project), // the event's memory may be reused
		KeyId:          strings.Clone(ev.KeyID),
		ClientIp:       ip,
		DurationMs:     dur.Milliseconds(),
		Figures:        e.view.figures(),
		SampleEventIds: e.view.sampleIDs(ev.ID),
		Reason:         reason,
	}
	if kind == keymeterv1.Action_ACTION_THROTTLE {
		d.ThrottlePerS = a.spec.Rate
	}
	if e.prof != nil {
		e.act.prof.figures(d.Figures)
	}
	e.signal(ev.KeyID, r.ID, t)
	e.emit(s, d)
}

// fireMode is the mode, the action and the reason of action a before
// corroboration and the breaker: dry-run for allowlisted traffic, and an
// alert instead of a key action when the traffic is anonymous.
func (e *Engine) fireMode(r *compiledRule, a *compiledAction, ev *event.Event) (keymeterv1.Mode, keymeterv1.Action, string) {
	mode := e.ruleMode(r)
	reason := a.spec.Reason
	if reason == "" {
		reason = r.Name + ": " + a.spec.When
	}
	if mode == keymeterv1.Mode_MODE_ENFORCE && e.allowlisted(ev) {
		mode = keymeterv1.Mode_MODE_DRY_RUN
		reason += " (allowlisted)"
	}
	kind := a.kind
	strong := kind == keymeterv1.Action_ACTION_REVOKE || kind == keymeterv1.Action_ACTION_SUSPEND
	if (strong || kind == keymeterv1.Action_ACTION_THROTTLE) && ev.KeyID == "" {
		// Nothing to act on: the traffic is anonymous.
		kind = keymeterv1.Action_ACTION_ALERT
		reason += " (no key to " + a.spec.Type + ")"
	}
	return mode, kind, reason
}

// corroboration looks for another rule's recent signal on keyID. Without
// one, the action is held: quiet when it was already reported as held
// within its suppression, else reported once now as an alert (held) and
// looked at again in a minute.
func (e *Engine) corroboration(s *ruleState, g *group, key string, i int, keyID string, t int64) (corroborator string, held, quiet bool) {
	r := s.r
	e.sh.mu.Lock()
	if k := e.sh.signals[keyID]; k != nil {
		corroborator = k.other(r.ID, t-e.corrWindow)
	}
	e.sh.mu.Unlock()
	if corroborator != "" {
		return corroborator, false, false
	}
	st := s.suppSlot(key)
	s.suppress(g, key, i, t+recheck)
	if st[suppN*i+suppHeld] > t {
		return "", true, true
	}
	st[suppN*i+suppHeld] = t + r.actionSuppress(i)
	return "", true, false
}

// escalation is the escalation trail of action i: the first weaker action
// of the rule that fired on the group within its suppression (st).
func escalation(r *compiledRule, st []int64, i int, t int64) string {
	for j := 0; j < i; j++ {
		if at := st[suppN*j+suppFired]; at != 0 && st[suppN*j+suppEnd] > t && r.actions[j].kind != r.actions[i].kind {
			return fmt.Sprintf(" (escalated from %s at %s)", r.actions[j].spec.Type, time.Unix(0, at).UTC().Format(time.RFC3339))
		}
	}
	return ""
}

// actionDuration is how long an action of kind lasts: throttles and
// suspensions default, alerts and revocations have none.
func actionDuration(dur time.Duration, kind keymeterv1.Action) time.Duration {
	switch {
	case dur == 0 && kind == keymeterv1.Action_ACTION_THROTTLE:
		return defaultThrottle
	case dur == 0 && kind == keymeterv1.Action_ACTION_SUSPEND:
		return defaultSuspend
	case kind == keymeterv1.Action_ACTION_ALERT || kind == keymeterv1.Action_ACTION_REVOKE:
		return 0
	}
	return dur
}

// blockTarget is what a decision names as its address: for block_ip on a
// rule grouped by network, the network (key); grouped by ASN, the operator
// (AS<n>), not the one address that crossed the threshold; else the
// event's address.
func blockTarget(r *compiledRule, kind keymeterv1.Action, key, clientIP string) string {
	switch {
	case kind != keymeterv1.Action_ACTION_BLOCK_IP:
	case strings.IndexByte(key, '/') > 0 && validNet(key):
		return key
	case r.byASN:
		if n, err := strconv.ParseUint(key, 10, 32); err == nil && n > 0 {
			return "AS" + key
		}
	}
	return strings.Clone(clientIP)
}

// sweepState drops suppression and signal records that no longer matter.
func (e *Engine) sweepState(now int64) {
	e.lastSweep = now
	// Breakers re-arm once their window has passed, even if no suspension
	// or revocation was attempted since (the stats say so).
	for _, s := range e.states {
		if s.tripped && now-s.bk.trippedAt >= e.bkWindow {
			s.bk.prune(now - e.bkWindow)
			if len(s.bk.keys) < e.maxRevokes {
				s.tripped = false
				e.log.Info("detect: circuit breaker re-armed", "rule", s.r.ID)
			}
		}
	}
	for _, s := range e.states {
		for k, st := range s.supp {
			live := false
			for i := 0; i+suppN <= len(st); i += suppN {
				if st[i+suppEnd] > now || st[i+suppHeld] > now {
					live = true
				}
			}
			if !live {
				delete(s.supp, k)
			}
		}
	}
	e.sh.mu.Lock()
	defer e.sh.mu.Unlock()
	for k, sig := range e.sh.signals {
		if sig.other("", now-e.corrWindow) == "" {
			delete(e.sh.signals, k)
		}
	}
}

func validNet(s string) bool {
	_, err := netip.ParsePrefix(s)
	return err == nil
}

// shared is what the engines of a Parallel share: a rule on one engine
// corroborates a rule on another, and the global breaker budget is one.
// Touched only when a rule fires.
type shared struct {
	mu      sync.Mutex
	signals map[string]*keySignals
	global  breakerState
}

func newShared() *shared { return &shared{signals: map[string]*keySignals{}} }
