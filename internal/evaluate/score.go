package evaluate

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// DefaultGrace is how long after a label's end a decision still counts for it.
const DefaultGrace = 10 * time.Minute

// rank orders the key actions: an action at least as strong as the intended
// one satisfies it. block_ip is apart.
var rank = map[string]int{"alert": 1, "throttle": 2, "suspend": 3, "revoke": 4}

// ActionName is the label/rule name of a decision's action.
func ActionName(a keymeterv1.Action) string {
	switch a {
	case keymeterv1.Action_ACTION_ALERT:
		return "alert"
	case keymeterv1.Action_ACTION_THROTTLE:
		return "throttle"
	case keymeterv1.Action_ACTION_BLOCK_IP:
		return "block_ip"
	case keymeterv1.Action_ACTION_SUSPEND:
		return "suspend"
	case keymeterv1.Action_ACTION_REVOKE:
		return "revoke"
	}
	return "unspecified"
}

// Scorer follows a backtest: it sees every event (Event) and every
// decision (Decide, a detect.Sink) and scores them against the labels.
// It is safe for concurrent use.
type Scorer struct {
	mu     sync.Mutex
	labels []Label
	grace  time.Duration
	byKey  map[string][]int
	nets   []int

	events, benign int64
	res            []LabelResult
	falseActs      map[string]int64     // enforced non-alert actions on benign groups, by action
	falseDry       map[string]int64     // the same in dry-run
	benignAlerts   int64                // enforced alerts on benign groups
	benignKeys     map[string]BadAction // benign keys revoked or suspended (enforced)
	falseGroups    map[string]map[string]bool
}

// LabelResult is the outcome of one label.
type LabelResult struct {
	Label
	Detected      bool          `json:"detected"`
	FirstDecision time.Time     `json:"first_decision,omitempty"`
	Decisions     int           `json:"decisions"`
	DryRun        int           `json:"dry_run_decisions"`
	Strongest     string        `json:"strongest_enforced_action,omitempty"` // on alert < throttle < suspend < revoke
	BlockedIP     bool          `json:"block_ip_enforced,omitempty"`
	Intended      bool          `json:"intended_action_taken"`
	TimeToAction  time.Duration `json:"time_to_intended_ns,omitempty"`
	Forbidden     []string      `json:"forbidden_taken,omitempty"`
	Rules         []string      `json:"rules,omitempty"`
}

// Passed reports whether the intended action was taken and no forbidden one.
func (r *LabelResult) Passed() bool { return r.Intended && len(r.Forbidden) == 0 }

// BadAction is a revocation or suspension of a benign key.
type BadAction struct {
	Key    string    `json:"key_id"`
	Action string    `json:"action"`
	Rule   string    `json:"rule"`
	At     time.Time `json:"at"`
}

// NewScorer scores against labels (already checked, e.g. by ReadLabels);
// grace 0 means DefaultGrace.
func NewScorer(labels []Label, grace time.Duration) (*Scorer, error) {
	if grace == 0 {
		grace = DefaultGrace
	}
	s := &Scorer{labels: labels, grace: grace, byKey: map[string][]int{}, falseActs: map[string]int64{},
		falseDry: map[string]int64{}, benignKeys: map[string]BadAction{}, falseGroups: map[string]map[string]bool{}}
	for i := range s.labels {
		l := &s.labels[i]
		if err := l.Check(); err != nil {
			return nil, fmt.Errorf("label %s: %v", l.ID, err)
		}
		if _, ok := l.Network(); ok {
			s.nets = append(s.nets, i)
		} else {
			s.byKey[l.Group] = append(s.byKey[l.Group], i)
		}
		s.res = append(s.res, LabelResult{Label: *l})
	}
	return s, nil
}

// Event counts one replayed event as an attack's or as benign.
func (s *Scorer) Event(e *event.Event) {
	attack := false
	if e.KeyID != "" {
		for _, i := range s.byKey[e.KeyID] {
			if l := &s.labels[i]; !e.Time.Before(l.Start) && !e.Time.After(l.End) {
				attack = true
				break
			}
		}
	} else if len(s.nets) > 0 {
		var ip netip.Addr
		for _, i := range s.nets {
			l := &s.labels[i]
			if e.Time.Before(l.Start) || e.Time.After(l.End) {
				continue
			}
			if !ip.IsValid() {
				ip, _ = netip.ParseAddr(e.ClientIP)
			}
			if l.prefix.Contains(ip) || (l.ASN != 0 && e.ASN == l.ASN) {
				attack = true
				break
			}
		}
	}
	s.mu.Lock()
	s.events++
	if !attack {
		s.benign++
	}
	s.mu.Unlock()
}

// decisionNet parses a decision's group as a network: an address, a CIDR,
// or an ASN ("64666", "AS64666").
func decisionNet(group string) (p netip.Prefix, asn uint32, ok bool) {
	if pr, err := netip.ParsePrefix(group); err == nil {
		return pr.Masked(), 0, true
	}
	if a, err := netip.ParseAddr(group); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), 0, true
	}
	g := strings.TrimPrefix(strings.TrimPrefix(group, "AS"), "as")
	if n, err := strconv.ParseUint(g, 10, 32); err == nil && n > 0 {
		return netip.Prefix{}, uint32(n), true
	}
	return netip.Prefix{}, 0, false
}

// matches reports whether decision d is about label l's group, and whether
// its network covers the label's whole network (for block_ip).
func matches(l *Label, d *keymeterv1.Decision) (match, covers bool) {
	lp, isNet := l.Network()
	if !isNet {
		return d.Group == l.Group || d.KeyId == l.Group || strings.Contains(d.Group, l.Group), false
	}
	p, asn, ok := decisionNet(d.Group)
	if !ok {
		return false, false
	}
	if asn != 0 {
		return l.ASN != 0 && asn == l.ASN, l.ASN != 0 && asn == l.ASN
	}
	if p.Addr().Is4() != lp.Addr().Is4() {
		return false, false
	}
	return p.Overlaps(lp), p.Bits() <= lp.Bits() && p.Contains(lp.Addr())
}

// Decide implements detect.Sink.
func (s *Scorer) Decide(d *keymeterv1.Decision) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := time.Unix(0, d.TimeUnixNano).UTC()
	act := ActionName(d.Action)
	enforced := d.Mode == keymeterv1.Mode_MODE_ENFORCE
	attributed, legitKey := false, false
	for i := range s.labels {
		l := &s.labels[i]
		m, covers := matches(l, d)
		if !m {
			continue
		}
		r := &s.res[i]
		if enforced && slices.Contains(l.ForbiddenActions, act) {
			if !slices.Contains(r.Forbidden, act) {
				r.Forbidden = append(r.Forbidden, act)
			}
			legitKey = true
		}
		if t.Before(l.Start) {
			continue // before the attack: the group was still benign
		}
		attributed = true
		if t.After(l.End.Add(s.grace)) {
			continue // after the attack: neither a detection nor a false action
		}
		r.Decisions++
		if !r.Detected {
			r.Detected, r.FirstDecision = true, t
		}
		if !slices.Contains(r.Rules, d.RuleId) {
			r.Rules = append(r.Rules, d.RuleId)
		}
		if !enforced {
			r.DryRun++
			continue
		}
		if act == "block_ip" {
			r.BlockedIP = true
		} else if rank[act] > rank[r.Strongest] {
			r.Strongest = act
		}
		if intended(l, act, covers) && !slices.Contains(l.ForbiddenActions, act) && !r.Intended {
			r.Intended, r.TimeToAction = true, t.Sub(l.Start)
		}
	}
	if attributed && !legitKey {
		return
	}
	if !enforced {
		if act != "alert" {
			s.falseDry[act]++
		}
		return
	}
	if act == "alert" {
		s.benignAlerts++
		return
	}
	s.falseActs[act]++
	if s.falseGroups[act] == nil {
		s.falseGroups[act] = map[string]bool{}
	}
	s.falseGroups[act][d.Group] = true
	if (act == "revoke" || act == "suspend") && d.KeyId != "" {
		k := d.KeyId + "/" + act
		if _, ok := s.benignKeys[k]; !ok {
			s.benignKeys[k] = BadAction{Key: d.KeyId, Action: act, Rule: d.RuleId, At: t}
		}
	}
}

// intended reports whether an enforced act is the label's intended action
// or stronger; a block_ip must cover the label's network (covers).
func intended(l *Label, act string, covers bool) bool {
	switch l.IntendedAction {
	case "block_ip":
		return act == "block_ip" && covers
	case "alert":
		return true
	}
	return rank[act] >= rank[l.IntendedAction]
}

// Result is the score of a backtest over labelled history.
type Result struct {
	Events          int64            `json:"events"`
	BenignEvents    int64            `json:"benign_events"`
	Labels          []LabelResult    `json:"labels"`
	Detected        int              `json:"detected"`
	IntendedTaken   int              `json:"intended_taken"`
	DetectionRecall float64          `json:"detection_recall"`
	IntendedRecall  float64          `json:"intended_recall"`
	BenignRevoked   []BadAction      `json:"benign_keys_revoked_or_suspended"`
	FalseActions    map[string]int64 `json:"false_actions"`         // enforced, by action
	FalseDryRun     map[string]int64 `json:"false_dry_run_actions"` // would have been, by action
	FalseGroups     map[string]int   `json:"false_action_groups"`   // distinct groups, by action
	BenignAlerts    int64            `json:"benign_alerts"`         // enforced alerts
	MaxRevokeTime   time.Duration    `json:"max_revoke_latency_ns"` // of labels whose intended action is revoke
	Grace           time.Duration    `json:"grace_ns"`
}

// Per10M scales a count to a rate per 10 million benign events.
func (r *Result) Per10M(n int64) float64 {
	if r.BenignEvents == 0 {
		return 0
	}
	return float64(n) * 1e7 / float64(r.BenignEvents)
}

// FalseTotal is the number of enforced false actions (not alerts).
func (r *Result) FalseTotal() int64 {
	var n int64
	for _, v := range r.FalseActions {
		n += v
	}
	return n
}

// Passed is the gate: every label got its intended action and no
// forbidden one, and no benign key was revoked or suspended.
func (r *Result) Passed() bool {
	return r.IntendedTaken == len(r.Labels) && len(r.BenignRevoked) == 0 && allClean(r.Labels)
}

func allClean(ls []LabelResult) bool {
	for i := range ls {
		if !ls[i].Passed() {
			return false
		}
	}
	return true
}

// Result returns the score so far.
func (s *Scorer) Result() *Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &Result{Events: s.events, BenignEvents: s.benign, Labels: slices.Clone(s.res), FalseActions: map[string]int64{},
		FalseDryRun: map[string]int64{}, FalseGroups: map[string]int{}, BenignAlerts: s.benignAlerts, Grace: s.grace}
	for k, v := range s.falseActs {
		r.FalseActions[k] = v
		r.FalseGroups[k] = len(s.falseGroups[k])
	}
	for k, v := range s.falseDry {
		r.FalseDryRun[k] = v
	}
	for _, l := range r.Labels {
		if l.Detected {
			r.Detected++
		}
		if l.Passed() {
			r.IntendedTaken++
		}
		if l.IntendedAction == "revoke" {
			if !l.Intended {
				r.MaxRevokeTime = -1
			} else if r.MaxRevokeTime >= 0 && l.TimeToAction > r.MaxRevokeTime {
				r.MaxRevokeTime = l.TimeToAction
			}
		}
	}
	if n := len(r.Labels); n > 0 {
		r.DetectionRecall = float64(r.Detected) / float64(n)
		r.IntendedRecall = float64(r.IntendedTaken) / float64(n)
	}
	for _, b := range s.benignKeys {
		r.BenignRevoked = append(r.BenignRevoked, b)
	}
	slices.SortFunc(r.BenignRevoked, func(a, b BadAction) int { return a.At.Compare(b.At) })
	return r
}

// WriteText prints the per-label table, the benign keys revoked or
// suspended, and the totals.
func (r *Result) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "%-26s %-9s %-9s %-14s %-6s %10s  %s\n", "LABEL", "DETECTED", "INTENDED", "TAKEN", "RESULT", "TIME", "GROUP / RULES")
	for _, l := range r.Labels {
		det, res, tt := "no", "FAIL", "-"
		if l.Detected {
			det = "yes"
			if l.DryRun == l.Decisions {
				det = "dry-run"
			}
		}
		if l.Passed() {
			res = "ok"
		}
		if l.Intended {
			tt = l.TimeToAction.Round(time.Second).String()
		}
		taken := l.Strongest
		if l.BlockedIP {
			taken = strings.TrimPrefix(taken+"+block_ip", "+")
		}
		if taken == "" {
			taken = "-"
		}
		for _, f := range l.Forbidden {
			taken += " !" + f
		}
		fmt.Fprintf(w, "%-26s %-9s %-9s %-14s %-6s %10s  %s %s\n", l.ID, det, l.IntendedAction, taken, res, tt, l.Group, strings.Join(l.Rules, ","))
	}
	if len(r.BenignRevoked) > 0 {
		fmt.Fprintf(w, "benign keys revoked or suspended (%d):\n", len(r.BenignRevoked))
		for _, b := range r.BenignRevoked {
			fmt.Fprintf(w, "  %s %s by %s at %s\n", b.Key, b.Action, b.Rule, b.At.Format(time.RFC3339))
		}
	}
	fmt.Fprintf(w, "detected %d of %d, intended action %d of %d; on %d benign events: %d enforced false actions (%.1f per 10M) %s, %d benign alerts (%.1f per 10M); dry-run false actions %s\n",
		r.Detected, len(r.Labels), r.IntendedTaken, len(r.Labels), r.BenignEvents, r.FalseTotal(), r.Per10M(r.FalseTotal()),
		fmtCounts(r.FalseActions), r.BenignAlerts, r.Per10M(r.BenignAlerts), fmtCounts(r.FalseDryRun))
	return nil
}

func fmtCounts(m map[string]int64) string {
	var parts []string
	for _, a := range []string{"throttle", "block_ip", "suspend", "revoke"} {
		if m[a] > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", a, m[a]))
		}
	}
	if len(parts) == 0 {
		return "(none)"
	}
	return "(" + strings.Join(parts, " ") + ")"
}

// Summary is the machine-readable name=value line.
func (r *Result) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "labels=%d detected=%d intended=%d detection_recall=%.3f intended_recall=%.3f benign_events=%d benign_keys_revoked_or_suspended=%d",
		len(r.Labels), r.Detected, r.IntendedTaken, r.DetectionRecall, r.IntendedRecall, r.BenignEvents, len(r.BenignRevoked))
	fmt.Fprintf(&b, " false_actions=%d false_actions_per_10m=%.1f", r.FalseTotal(), r.Per10M(r.FalseTotal()))
	for _, a := range []string{"throttle", "block_ip", "suspend", "revoke"} {
		fmt.Fprintf(&b, " false_%s_per_10m=%.1f", a, r.Per10M(r.FalseActions[a]))
	}
	fmt.Fprintf(&b, " benign_alerts=%d benign_alerts_per_10m=%.1f", r.BenignAlerts, r.Per10M(r.BenignAlerts))
	if r.MaxRevokeTime >= 0 {
		fmt.Fprintf(&b, " max_revoke_latency_s=%.0f", r.MaxRevokeTime.Seconds())
	} else {
		b.WriteString(" max_revoke_latency_s=missed")
	}
	fmt.Fprintf(&b, " passed=%t", r.Passed())
	return b.String()
}
