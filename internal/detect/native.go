package detect

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
)

// featureFields are what a rule's aggregate computes, so expressions can be
// checked against them and planned natively.
type featureFields struct {
	distinct []string
	sums     []string
	baseline bool
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// checkFeatureRefs refuses distinct.X / sum.X for features the rule does
// not compute, and baseline when the rule has none: at run time they would
// only be errors.
func checkFeatureRefs(a *cel.Ast, ff featureFields) error {
	var err error
	var walk func(e celast.Expr)
	walk = func(e celast.Expr) {
		if err != nil || e == nil {
			return
		}
		switch e.Kind() {
		case celast.IdentKind:
			if e.AsIdent() == "baseline" && !ff.baseline {
				err = &compileError{line: 1, msg: "baseline is used but the rule's aggregate has no baseline (add aggregate.baseline: {default: N})"}
			}
		case celast.SelectKind:
			s := e.AsSelect()
			if op := s.Operand(); op.Kind() == celast.IdentKind {
				switch op.AsIdent() {
				case "profile":
					if _, ok := profileFields[s.FieldName()]; !ok {
						err = &compileError{line: 1, msg: fmt.Sprintf("profile.%s does not exist (see rules/README.md for the profile's fields)", s.FieldName())}
					}
				case "distinct":
					if indexOf(ff.distinct, s.FieldName()) < 0 {
						err = &compileError{line: 1, msg: fmt.Sprintf("distinct.%s is not computed (aggregate.distinct lists %v)", s.FieldName(), ff.distinct)}
					}
				case "sum":
					if indexOf(ff.sums, s.FieldName()) < 0 {
						err = &compileError{line: 1, msg: fmt.Sprintf("sum.%s is not computed (aggregate.sum lists %v)", s.FieldName(), ff.sums)}
					}
				}
			}
			walk(s.Operand())
		case celast.CallKind:
			c := e.AsCall()
			if c.IsMemberFunction() {
				walk(c.Target())
			}
			for _, x := range c.Args() {
				walk(x)
			}
		case celast.ListKind:
			for _, x := range e.AsList().Elements() {
				walk(x)
			}
		case celast.ComprehensionKind:
			c := e.AsComprehension()
			walk(c.IterRange())
			walk(c.AccuInit())
			walk(c.LoopCondition())
			walk(c.LoopStep())
			walk(c.Result())
		case celast.MapKind:
			for _, x := range e.AsMap().Entries() {
				me := x.AsMapEntry()
				walk(me.Key())
				walk(me.Value())
			}
		}
	}
	walk(a.NativeRep().Expr())
	return err
}

// nexpr is a natively planned expression: exactly one of the functions is
// set, according to t.
type nexpr struct {
	t valKind
	b func(*activation) bool
	i func(*activation) int64
	d func(*activation) float64
	s func(*activation) string
	// ap appends the string value to a buffer without allocating; set
	// where the plain string form would allocate (net24).
	ap func(*activation, []byte) []byte
}

// translate plans a checked expression as Go closures. It reports false
// when the expression uses anything outside the subset; the CEL program is
// then used. The subset avoids anything whose CEL semantics are errors
// (integer division, overflow-prone conversions) so the two paths agree.
func translate(a *cel.Ast, ff featureFields) (n nexpr, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return tr(a.NativeRep().Expr(), ff)
}

func tr(e celast.Expr, ff featureFields) (nexpr, bool) {
	switch e.Kind() {
	case celast.LiteralKind:
		return trLit(e.AsLiteral())
	case celast.IdentKind:
		return trIdent(e.AsIdent())
	case celast.SelectKind:
		s := e.AsSelect()
		if s.IsTestOnly() || s.Operand().Kind() != celast.IdentKind {
			return nexpr{}, false
		}
		switch s.Operand().AsIdent() {
		case "profile":
			name := s.FieldName()
			switch name { // the hot ones, without the name lookup
			case "mature":
				return nexpr{t: kBool, b: func(a *activation) bool { return a.prof.mature() }}, true
			case "seasonal":
				return nexpr{t: kBool, b: func(a *activation) bool { return a.prof.seasonal() }}, true
			case "hour_baseline":
				return nexpr{t: kDbl, d: func(a *activation) float64 { return a.prof.hourBaseline() }}, true
			case "ips_p99":
				return nexpr{t: kDbl, d: func(a *activation) float64 { return a.prof.quantile(hIPs, 0.99) }}, true
			case "countries_p99":
				return nexpr{t: kDbl, d: func(a *activation) float64 { return a.prof.quantile(hCountries, 0.99) }}, true
			}
			switch profileFields[name] {
			case kBool:
				return nexpr{t: kBool, b: func(a *activation) bool { b, _, _ := a.prof.field(name); return b }}, true
			case kInt:
				return nexpr{t: kInt, i: func(a *activation) int64 { _, i, _ := a.prof.field(name); return i }}, true
			case kDbl:
				return nexpr{t: kDbl, d: func(a *activation) float64 { _, _, d := a.prof.field(name); return d }}, true
			}
			return nexpr{}, false
		case "distinct":
			i := indexOf(ff.distinct, s.FieldName())
			if i < 0 {
				return nexpr{}, false
			}
			return nexpr{t: kInt, i: func(a *activation) int64 { return a.agg.distinct(i) }}, true
		case "sum":
			i := indexOf(ff.sums, s.FieldName())
			if i < 0 {
				return nexpr{}, false
			}
			return nexpr{t: kInt, i: func(a *activation) int64 { return a.agg.sum(i) }}, true
		}
		return nexpr{}, false
	case celast.CallKind:
		return trCall(e.AsCall(), ff)
	}
	return nexpr{}, false
}

func trLit(v ref.Val) (nexpr, bool) {
	switch c := v.(type) {
	case types.Bool:
		b := bool(c)
		return nexpr{t: kBool, b: func(*activation) bool { return b }}, true
	case types.Int:
		i := int64(c)
		return nexpr{t: kInt, i: func(*activation) int64 { return i }}, true
	case types.Double:
		d := float64(c)
		return nexpr{t: kDbl, d: func(*activation) float64 { return d }}, true
	case types.String:
		s := string(c)
		return nexpr{t: kStr, s: func(*activation) string { return s }}, true
	}
	return nexpr{}, false
}

func trIdent(name string) (nexpr, bool) {
	if f, ok := eventFieldByName[name]; ok {
		switch f.Kind {
		case kStr:
			if name == "outcome" {
				return nexpr{t: kStr, s: func(a *activation) string { return a.ev.Outcome.String() }}, true
			}
			get := f.Str
			return nexpr{t: kStr, s: func(a *activation) string { return get(a.ev) }}, true
		case kInt:
			get := f.Int
			return nexpr{t: kInt, i: func(a *activation) int64 { return get(a.ev) }}, true
		}
		return nexpr{}, false
	}
	switch name {
	case "key_kind":
		return nexpr{t: kStr, s: func(a *activation) string { return a.keyKind() }}, true
	case "count":
		return nexpr{t: kInt, i: func(a *activation) int64 { return a.agg.count() }}, true
	case "baseline":
		return nexpr{t: kDbl, d: func(a *activation) float64 { return a.agg.baseline() }}, true
	case "window_seconds":
		return nexpr{t: kInt, i: func(a *activation) int64 { return a.agg.windowSeconds() }}, true
	case "rate":
		return nexpr{t: kDbl, d: func(a *activation) float64 { return a.agg.rate() }}, true
	case "group":
		return nexpr{t: kStr, s: func(a *activation) string { return a.agg.groupKey() }}, true
	}
	return nexpr{}, false
}

// constSet returns the constant strings or ints of a list expression.
func constList(e celast.Expr) ([]ref.Val, bool) {
	switch e.Kind() {
	case celast.ListKind:
		var out []ref.Val
		for _, x := range e.AsList().Elements() {
			if x.Kind() != celast.LiteralKind {
				return nil, false
			}
			out = append(out, x.AsLiteral())
		}
		return out, true
	case celast.LiteralKind:
		l, ok := e.AsLiteral().(traits.Lister)
		if !ok {
			return nil, false
		}
		var out []ref.Val
		it := l.Iterator()
		for it.HasNext() == types.True {
			out = append(out, it.Next())
		}
		return out, true
	}
	return nil, false
}

func asDbl(n nexpr) func(*activation) float64 {
	if n.t == kDbl {
		return n.d
	}
	i := n.i
	return func(a *activation) float64 { return float64(i(a)) }
}

func trCall(c celast.CallExpr, ff featureFields) (nexpr, bool) {
	fn := c.FunctionName()
	args := c.Args()
	if c.IsMemberFunction() && c.Target().Kind() == celast.IdentKind && c.Target().AsIdent() == "profile" {
		return trProfileCall(fn, args, ff)
	}
	if c.IsMemberFunction() {
		return trMemberCall(c, fn, args, ff)
	}
	switch fn {
	case operators.In:
		return trIn(args, ff)
	case "net24":
		if len(args) != 1 {
			return nexpr{}, false
		}
		x, ok := tr(args[0], ff)
		if !ok || x.t != kStr {
			return nexpr{}, false
		}
		get := x.s
		return nexpr{t: kStr, s: func(a *activation) string { return clientNet(get(a)) },
			ap: func(a *activation, buf []byte) []byte { return appendClientNet(buf, get(a)) }}, true
	case "in_cidr":
		if len(args) != 2 || args[1].Kind() != celast.LiteralKind {
			return nexpr{}, false
		}
		cs, ok := args[1].AsLiteral().(types.String)
		if !ok {
			return nexpr{}, false
		}
		p, err := netip.ParsePrefix(string(cs))
		if err != nil {
			return nexpr{}, false // CEL reports the error at run time
		}
		x, ok := tr(args[0], ff)
		if !ok || x.t != kStr {
			return nexpr{}, false
		}
		get := x.s
		return nexpr{t: kBool, b: func(a *activation) bool {
			ad, err := netip.ParseAddr(get(a))
			return err == nil && p.Contains(ad.Unmap())
		}}, true
	case "double":
		if len(args) != 1 {
			return nexpr{}, false
		}
		x, ok := tr(args[0], ff)
		if !ok || (x.t != kInt && x.t != kDbl) {
			return nexpr{}, false
		}
		return nexpr{t: kDbl, d: asDbl(x)}, true
	case operators.LogicalNot:
		x, ok := tr(args[0], ff)
		if !ok || x.t != kBool {
			return nexpr{}, false
		}
		f := x.b
		return nexpr{t: kBool, b: func(a *activation) bool { return !f(a) }}, true
	case operators.Negate:
		x, ok := tr(args[0], ff)
		if !ok {
			return nexpr{}, false
		}
		if x.t == kDbl {
			f := x.d
			return nexpr{t: kDbl, d: func(a *activation) float64 { return -f(a) }}, true
		}
		return nexpr{}, false
	case operators.Conditional:
		return trConditional(args, ff)
	}
	return trBinaryCall(fn, args, ff)
}

// trMemberCall translates the string methods startsWith, endsWith and
// contains.
func trMemberCall(c celast.CallExpr, fn string, args []celast.Expr, ff featureFields) (nexpr, bool) {
	target, ok := tr(c.Target(), ff)
	if !ok || target.t != kStr || len(args) != 1 {
		return nexpr{}, false
	}
	arg, ok := tr(args[0], ff)
	if !ok || arg.t != kStr {
		return nexpr{}, false
	}
	ts, as := target.s, arg.s
	switch fn {
	case "startsWith":
		return nexpr{t: kBool, b: func(a *activation) bool { return strings.HasPrefix(ts(a), as(a)) }}, true
	case "endsWith":
		return nexpr{t: kBool, b: func(a *activation) bool { return strings.HasSuffix(ts(a), as(a)) }}, true
	case "contains":
		return nexpr{t: kBool, b: func(a *activation) bool { return strings.Contains(ts(a), as(a)) }}, true
	}
	return nexpr{}, false
}

// trIn translates x in [constants] and x in a list field.
func trIn(args []celast.Expr, ff featureFields) (nexpr, bool) {
	if len(args) != 2 {
		return nexpr{}, false
	}
	lhs, ok := tr(args[0], ff)
	if !ok {
		return nexpr{}, false
	}
	list, ok := constList(args[1])
	if !ok {
		return nexpr{}, false
	}
	switch lhs.t {
	case kStr:
		set := make([]string, 0, len(list))
		for _, v := range list {
			s, ok := v.(types.String)
			if !ok {
				return nexpr{}, false
			}
			set = append(set, string(s))
		}
		return nexpr{t: kBool, b: inSet(lhs.s, set)}, true
	case kInt:
		set := make([]int64, 0, len(list))
		for _, v := range list {
			s, ok := v.(types.Int)
			if !ok {
				return nexpr{}, false
			}
			set = append(set, int64(s))
		}
		return nexpr{t: kBool, b: inSet(lhs.i, set)}, true
	}
	return nexpr{}, false
}

// trConditional translates c ? x : y.
func trConditional(args []celast.Expr, ff featureFields) (nexpr, bool) {
	cond, ok1 := tr(args[0], ff)
	x, ok2 := tr(args[1], ff)
	y, ok3 := tr(args[2], ff)
	if !ok1 || !ok2 || !ok3 || cond.t != kBool || x.t != y.t {
		return nexpr{}, false
	}
	cb := cond.b
	switch x.t {
	case kBool:
		return nexpr{t: kBool, b: choose(cb, x.b, y.b)}, true
	case kInt:
		return nexpr{t: kInt, i: choose(cb, x.i, y.i)}, true
	case kDbl:
		return nexpr{t: kDbl, d: choose(cb, x.d, y.d)}, true
	case kStr:
		return nexpr{t: kStr, s: choose(cb, x.s, y.s)}, true
	}
	return nexpr{}, false
}

// inSet is `get(a) in set` over one activation.
func inSet[T comparable](get func(*activation) T, set []T) func(*activation) bool {
	return func(a *activation) bool { return slices.Contains(set, get(a)) }
}

// choose is cond ? x : y over one activation.
func choose[T any](cond func(*activation) bool, x, y func(*activation) T) func(*activation) T {
	return func(a *activation) T {
		if cond(a) {
			return x(a)
		}
		return y(a)
	}
}

// trBinaryCall translates the binary operators.
func trBinaryCall(fn string, args []celast.Expr, ff featureFields) (nexpr, bool) {
	if len(args) != 2 {
		return nexpr{}, false
	}
	x, ok1 := tr(args[0], ff)
	y, ok2 := tr(args[1], ff)
	if !ok1 || !ok2 {
		return nexpr{}, false
	}
	switch fn {
	case operators.LogicalAnd, operators.LogicalOr:
		if x.t != kBool || y.t != kBool {
			return nexpr{}, false
		}
		xf, yf := x.b, y.b
		if fn == operators.LogicalAnd {
			return nexpr{t: kBool, b: func(a *activation) bool { return xf(a) && yf(a) }}, true
		}
		return nexpr{t: kBool, b: func(a *activation) bool { return xf(a) || yf(a) }}, true
	case operators.Equals, operators.NotEquals:
		neg := fn == operators.NotEquals
		var eq func(*activation) bool
		switch {
		case x.t == kStr && y.t == kStr:
			eq = strEq(x, y)
		case x.t == kBool && y.t == kBool:
			xf, yf := x.b, y.b
			eq = func(a *activation) bool { return xf(a) == yf(a) }
		case x.t == kInt && y.t == kInt:
			xf, yf := x.i, y.i
			eq = func(a *activation) bool { return xf(a) == yf(a) }
		case isNum(x) && isNum(y):
			xf, yf := asDbl(x), asDbl(y)
			eq = func(a *activation) bool { return xf(a) == yf(a) }
		default:
			return nexpr{}, false
		}
		if neg {
			return nexpr{t: kBool, b: func(a *activation) bool { return !eq(a) }}, true
		}
		return nexpr{t: kBool, b: eq}, true
	case operators.Less, operators.LessEquals, operators.Greater, operators.GreaterEquals:
		return trCompare(fn, x, y)
	case operators.Add, operators.Subtract, operators.Multiply:
		switch {
		case x.t == kDbl && y.t == kDbl:
			xf, yf := x.d, y.d
			switch fn {
			case operators.Add:
				return nexpr{t: kDbl, d: func(a *activation) float64 { return xf(a) + yf(a) }}, true
			case operators.Subtract:
				return nexpr{t: kDbl, d: func(a *activation) float64 { return xf(a) - yf(a) }}, true
			default:
				return nexpr{t: kDbl, d: func(a *activation) float64 { return xf(a) * yf(a) }}, true
			}
		}
		return nexpr{}, false // integer arithmetic can overflow, which CEL reports as an error
	case operators.Divide:
		if x.t == kDbl && y.t == kDbl {
			xf, yf := x.d, y.d
			return nexpr{t: kDbl, d: func(a *activation) float64 { return xf(a) / yf(a) }}, true
		}
	}
	return nexpr{}, false
}

func isNum(n nexpr) bool { return n.t == kInt || n.t == kDbl }

// strEq special-cases comparing a string to a constant, the commonest test.
func strEq(x, y nexpr) func(*activation) bool {
	xf, yf := x.s, y.s
	return func(a *activation) bool { return xf(a) == yf(a) }
}

func trCompare(fn string, x, y nexpr) (nexpr, bool) {
	type cmp = func(*activation) bool
	var f cmp
	switch {
	case x.t == kInt && y.t == kInt:
		xf, yf := x.i, y.i
		switch fn {
		case operators.Less:
			f = func(a *activation) bool { return xf(a) < yf(a) }
		case operators.LessEquals:
			f = func(a *activation) bool { return xf(a) <= yf(a) }
		case operators.Greater:
			f = func(a *activation) bool { return xf(a) > yf(a) }
		default:
			f = func(a *activation) bool { return xf(a) >= yf(a) }
		}
	case isNum(x) && isNum(y):
		xf, yf := asDbl(x), asDbl(y)
		switch fn {
		case operators.Less:
			f = func(a *activation) bool { return xf(a) < yf(a) }
		case operators.LessEquals:
			f = func(a *activation) bool { return xf(a) <= yf(a) }
		case operators.Greater:
			f = func(a *activation) bool { return xf(a) > yf(a) }
		default:
			f = func(a *activation) bool { return xf(a) >= yf(a) }
		}
	case x.t == kStr && y.t == kStr:
		xf, yf := x.s, y.s
		switch fn {
		case operators.Less:
			f = func(a *activation) bool { return xf(a) < yf(a) }
		case operators.LessEquals:
			f = func(a *activation) bool { return xf(a) <= yf(a) }
		case operators.Greater:
			f = func(a *activation) bool { return xf(a) > yf(a) }
		default:
			f = func(a *activation) bool { return xf(a) >= yf(a) }
		}
	default:
		return nexpr{}, false
	}
	return nexpr{t: kBool, b: f}, true
}

// trProfileCall plans profile.seen_country(c, days) and its kin.
func trProfileCall(fn string, args []celast.Expr, ff featureFields) (nexpr, bool) {
	if fn == "concurrent_minutes" && len(args) == 1 {
		v, ok := tr(args[0], ff)
		if !ok || v.t != kStr || v.s == nil {
			return nexpr{}, false
		}
		s := v.s
		return nexpr{t: kDbl, d: func(a *activation) float64 { return a.prof.concurrentMinutes(s(a)) }}, true
	}
	if fn == "run_minutes" && len(args) == 1 {
		v, ok := tr(args[0], ff)
		if !ok || v.t != kStr || v.s == nil {
			return nexpr{}, false
		}
		s := v.s
		return nexpr{t: kDbl, d: func(a *activation) float64 { return a.prof.runMinutes(s(a), a.prof.now) }}, true
	}
	if len(args) != 2 {
		return nexpr{}, false
	}
	v, ok := tr(args[0], ff)
	if !ok {
		return nexpr{}, false
	}
	dn, ok := tr(args[1], ff)
	if !ok || dn.t != kInt {
		return nexpr{}, false
	}
	days := dn.i
	switch {
	case fn == "seen_country" && v.t == kStr:
		s := v.s
		return nexpr{t: kBool, b: func(a *activation) bool { return a.prof.seenCountry(s(a), float64(days(a))) }}, true
	case fn == "seen_asn" && v.t == kInt:
		i := v.i
		return nexpr{t: kBool, b: func(a *activation) bool { return a.prof.seenASN(i(a), float64(days(a))) }}, true
	case fn == "seen_net" && v.t == kStr && v.s != nil:
		s := v.s
		return nexpr{t: kBool, b: func(a *activation) bool { return a.prof.seenNet(s(a), float64(days(a))) }}, true
	}
	return nexpr{}, false
}
