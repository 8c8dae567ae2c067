package detect

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// CompileOptions tune rule compilation.
type CompileOptions struct {
	// CostLimit is the static CEL cost ceiling per expression
	// (DefaultCostLimit when zero).
	CostLimit uint64
	// MaxGroups is the default cap on groups per rule (DefaultMaxGroups
	// when zero); a rule's aggregate.max_groups overrides it.
	MaxGroups int
}

// DefaultMaxGroups bounds each rule's window state.
const DefaultMaxGroups = 1 << 21

// DefaultDistinctCap bounds the values remembered per distinct field and group.
const DefaultDistinctCap = 256

// nBuckets is the number of sub-windows of a sliding window: the window
// slides in steps of window/nBuckets.
const nBuckets = 16

// RuleSet is a compiled, immutable set of rules, swapped atomically into
// a running engine.
type RuleSet struct {
	rules []*compiledRule
}

// Rules returns the source rules of the set, in load order.
func (s *RuleSet) Rules() []*Rule {
	out := make([]*Rule, len(s.rules))
	for i, r := range s.rules {
		out[i] = r.Rule
	}
	return out
}

// Len is the number of rules in the set.
func (s *RuleSet) Len() int { return len(s.rules) }

type compiledAction struct {
	spec ActionSpec
	kind keymeterv1.Action
	when *expr
}

type compiledRule struct {
	*Rule
	mode        keymeterv1.Mode
	match       *expr
	groupBy     []*expr
	window      int64 // ns
	bucketW     int64 // ns
	suppress    int64 // ns
	distinct    []*eventField
	sums        []*eventField
	baseline    *BaselineSpec
	alpha       float64
	actions     []compiledAction
	maxGroups   int
	distinctCap int
	retention   int64 // idle time after which a group is dropped
	fingerprint string
	usesProfile bool // an expression reads profile: the engine keeps profiles
	// byASN: the rule groups by the asn field alone, so its groups are AS
	// numbers and a block_ip blocks the ASN (client_ip AS<n>).
	byASN bool
}

var actionKinds = map[string]keymeterv1.Action{
	"alert":    keymeterv1.Action_ACTION_ALERT,
	"throttle": keymeterv1.Action_ACTION_THROTTLE,
	"block_ip": keymeterv1.Action_ACTION_BLOCK_IP,
	"suspend":  keymeterv1.Action_ACTION_SUSPEND,
	"revoke":   keymeterv1.Action_ACTION_REVOKE,
}

var modeKinds = map[string]keymeterv1.Mode{
	"enforce":  keymeterv1.Mode_MODE_ENFORCE,
	"dry_run":  keymeterv1.Mode_MODE_DRY_RUN,
	"disabled": keymeterv1.Mode_MODE_DISABLED,
}

// ActionName is the rule-file name of an action.
func ActionName(a keymeterv1.Action) string {
	for k, v := range actionKinds {
		if v == a {
			return k
		}
	}
	return a.String()
}

// ModeName is the rule-file name of a mode.
func ModeName(m keymeterv1.Mode) string {
	for k, v := range modeKinds {
		if v == m {
			return k
		}
	}
	return m.String()
}

// Compile type-checks, optimises and costs every expression of rules.
// Any error refuses the whole set, with file:line per problem.
func Compile(rules []*Rule, opts CompileOptions) (*RuleSet, error) {
	c, err := newCompiler(opts.CostLimit)
	if err != nil {
		return nil, err
	}
	if opts.MaxGroups <= 0 {
		opts.MaxGroups = DefaultMaxGroups
	}
	set := &RuleSet{}
	var errs []error
	seen := map[string]bool{}
	for _, r := range rules {
		if seen[r.ID] {
			errs = append(errs, &LoadError{File: r.File, Line: r.Line, Field: "id", Msg: fmt.Sprintf("duplicate rule id %q", r.ID)})
			continue
		}
		seen[r.ID] = true
		cr, err := c.compileRule(r, opts)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		set.rules = append(set.rules, cr)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return set, nil
}

func (c *compiler) compileRule(r *Rule, opts CompileOptions) (*compiledRule, error) {
	if r.pos.line == nil {
		// Built in code rather than parsed: validate here.
		r.pos = positions{line: map[string]int{}, block: map[string]bool{}}
		if err := validate(r, r.pos); err != nil {
			return nil, err
		}
	}
	var errs []error
	fail := func(field string, err error) {
		line := r.pos.of(field)
		var ce *compileError
		if errors.As(err, &ce) {
			line = r.pos.exprLine(field, ce.line)
		}
		msg := err.Error()
		if errors.Is(err, ErrTooCostly) {
			msg = fmt.Sprintf("rule %s: %s", r.ID, msg)
		}
		errs = append(errs, &LoadError{File: r.File, Line: line, Field: field, Msg: msg, Err: err})
	}
	ff := featureFields{distinct: r.Aggregate.Distinct, sums: r.Aggregate.Sum, baseline: r.Aggregate.Baseline != nil}
	cr := newCompiledRule(r, opts)
	var err error
	if cr.match, err = c.compile(r.Match, false, kBool, ff); err != nil {
		fail("match", err)
	}
	for i, g := range r.Aggregate.GroupBy {
		x, err := c.compile(g, false, 0, ff)
		if err != nil {
			fail(fmt.Sprintf("aggregate.group_by[%d]", i), err)
			continue
		}
		cr.groupBy = append(cr.groupBy, x)
	}
	if len(r.Actions) > 32 {
		fail("actions", fmt.Errorf("at most 32 actions per rule"))
	}
	for i, a := range r.Actions {
		x, err := c.compile(a.When, true, kBool, ff)
		if err != nil {
			fail(fmt.Sprintf("actions[%d].when", i), err)
			continue
		}
		cr.actions = append(cr.actions, compiledAction{spec: a, kind: actionKinds[a.Type], when: x})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	cr.byASN = len(r.Aggregate.GroupBy) == 1 && strings.TrimSpace(r.Aggregate.GroupBy[0]) == "asn"
	cr.usesProfile = strings.Contains(r.Match, "profile")
	for _, a := range r.Actions {
		cr.usesProfile = cr.usesProfile || strings.Contains(a.When, "profile")
	}
	for _, g := range r.Aggregate.GroupBy {
		cr.usesProfile = cr.usesProfile || strings.Contains(g, "profile")
	}
	// Window state survives a reload only when what it holds means the same.
	cr.fingerprint = fmt.Sprintf("%d|%v|%d|%v|%v|%v|%d", r.Version, r.Aggregate.GroupBy, r.Aggregate.Window,
		r.Aggregate.Distinct, r.Aggregate.Sum, r.Aggregate.Baseline != nil, len(r.Actions))
	return cr, nil
}

// newCompiledRule is r's settings with their defaults, before its
// expressions are compiled.
func newCompiledRule(r *Rule, opts CompileOptions) *compiledRule {
	cr := &compiledRule{
		Rule:     r,
		mode:     modeKinds[r.Mode],
		window:   int64(r.Aggregate.Window),
		suppress: int64(r.Suppress),
		baseline: r.Aggregate.Baseline,
	}
	cr.bucketW = max(cr.window/nBuckets, 1)
	if cr.suppress == 0 {
		cr.suppress = cr.window
	}
	cr.retention = max(cr.window, cr.suppress)
	if cr.baseline != nil {
		cr.alpha = cr.baseline.Alpha
		if cr.alpha == 0 {
			cr.alpha = 0.1
		}
		cr.retention += 2 * cr.window
	}
	cr.maxGroups = r.Aggregate.MaxGroups
	if cr.maxGroups == 0 {
		cr.maxGroups = opts.MaxGroups
	}
	cr.distinctCap = r.Aggregate.DistinctCap
	if cr.distinctCap == 0 {
		cr.distinctCap = DefaultDistinctCap
	}
	cr.distinctCap = max(cr.distinctCap, 2) // two values are held inline anyway
	for _, f := range r.Aggregate.Distinct {
		cr.distinct = append(cr.distinct, eventFieldByName[f])
	}
	for _, f := range r.Aggregate.Sum {
		cr.sums = append(cr.sums, eventFieldByName[f])
	}
	return cr
}

// Native reports, per expression of the rule, whether it runs as a native
// closure (true) or through the CEL interpreter; for lint output.
func (s *RuleSet) Native() map[string][]string {
	out := map[string][]string{}
	for _, r := range s.rules {
		var interp []string
		if !r.match.hasNat {
			interp = append(interp, "match")
		}
		for i, g := range r.groupBy {
			if !g.hasNat {
				interp = append(interp, fmt.Sprintf("aggregate.group_by[%d]", i))
			}
		}
		for i, a := range r.actions {
			if !a.when.hasNat {
				interp = append(interp, fmt.Sprintf("actions[%d].when", i))
			}
		}
		out[r.ID] = interp
	}
	return out
}

// MaxCost is the highest static cost of any expression of the rule.
func (s *RuleSet) MaxCost() map[string]uint64 {
	out := map[string]uint64{}
	for _, r := range s.rules {
		m := r.match.cost
		for _, g := range r.groupBy {
			m = max(m, g.cost)
		}
		for _, a := range r.actions {
			m = max(m, a.when.cost)
		}
		out[r.ID] = m
	}
	return out
}

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("invalid time %q (accepted: RFC 3339, e.g. 2026-01-01T00:00:00Z)", s)
	}
	return t, nil
}

func parseOutcome(s string) (event.Outcome, error) { return event.ParseOutcome(s) }

// clientNet is event.ClientNet; appendClientNet writes the same text into
// buf without allocating.
func clientNet(ip string) string { return event.ClientNet(ip) }

func appendClientNet(buf []byte, ip string) []byte {
	dots := 0
	for i := 0; i < len(ip); i++ {
		if ip[i] == '.' {
			dots++
			if dots == 3 {
				return append(append(buf, ip[:i]...), ".0/24"...)
			}
		}
	}
	if strings.IndexByte(ip, ':') >= 0 {
		return append(buf, event.ClientNet(ip)...)
	}
	return append(buf, ip...)
}
