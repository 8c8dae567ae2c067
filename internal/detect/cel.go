package detect

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"

	"github.com/keymeter/keymeter/internal/event"
)

// DefaultCostLimit is the static cost ceiling of one expression. The
// starter pack's expressions cost well under 100.
const DefaultCostLimit = 10_000

type valKind uint8

const (
	kStr valKind = iota + 1
	kInt
	kDbl
	kBool
	kTime
	kMap
)

// eventField is an event attribute visible to CEL under Name.
type eventField struct {
	Name string
	Kind valKind
	Str  func(*event.Event) string
	Int  func(*event.Event) int64
}

// eventFields are the variables of a match expression, named after the
// event's JSON fields (ip is the client IP).
var eventFields = []eventField{
	{Name: "id", Kind: kStr, Str: func(e *event.Event) string { return e.ID }},
	{Name: "project", Kind: kStr, Str: func(e *event.Event) string { return e.Project }},
	{Name: "key_id", Kind: kStr, Str: func(e *event.Event) string { return e.KeyID }},
	{Name: "outcome", Kind: kStr, Str: func(e *event.Event) string { return e.Outcome.String() }},
	{Name: "ip", Kind: kStr, Str: func(e *event.Event) string { return e.ClientIP }},
	{Name: "country", Kind: kStr, Str: func(e *event.Event) string { return e.Country }},
	{Name: "asn", Kind: kInt, Int: func(e *event.Event) int64 { return int64(e.ASN) }},
	{Name: "method", Kind: kStr, Str: func(e *event.Event) string { return e.Method }},
	{Name: "host", Kind: kStr, Str: func(e *event.Event) string { return e.Host }},
	{Name: "route", Kind: kStr, Str: func(e *event.Event) string { return e.Route }},
	{Name: "status", Kind: kInt, Int: func(e *event.Event) int64 { return int64(e.Status) }},
	{Name: "latency_us", Kind: kInt, Int: func(e *event.Event) int64 { return int64(e.LatencyUS) }},
	{Name: "bytes_in", Kind: kInt, Int: func(e *event.Event) int64 { return int64(e.BytesIn) }},
	{Name: "bytes_out", Kind: kInt, Int: func(e *event.Event) int64 { return int64(e.BytesOut) }},
	{Name: "user_agent", Kind: kStr, Str: func(e *event.Event) string { return e.UserAgent }},
	{Name: "verifier_id", Kind: kStr, Str: func(e *event.Event) string { return e.VerifierID }},
	{Name: "cost_units", Kind: kInt, Int: func(e *event.Event) int64 { return int64(e.CostUnits) }},
	{Name: "time", Kind: kTime},
}

var eventFieldByName = func() map[string]*eventField {
	m := make(map[string]*eventField, len(eventFields))
	for i := range eventFields {
		m[eventFields[i].Name] = &eventFields[i]
	}
	return m
}()

// aggregateVars are the extra variables of an action's when expression.
var aggregateVars = map[string]valKind{
	"count":          kInt,
	"distinct":       kMap,
	"sum":            kMap,
	"baseline":       kDbl,
	"window_seconds": kInt,
	"rate":           kDbl, // count per second over the window
	"group":          kStr,
}

func celType(k valKind) *cel.Type {
	switch k {
	case kStr:
		return cel.StringType
	case kInt:
		return cel.IntType
	case kDbl:
		return cel.DoubleType
	case kBool:
		return cel.BoolType
	case kTime:
		return cel.TimestampType
	default:
		return cel.MapType(cel.StringType, cel.IntType)
	}
}

// newEnv builds the CEL environment for match and group_by expressions
// (agg false) or for action conditions (agg true).
func newEnv(agg bool) (*cel.Env, error) {
	opts := []cel.EnvOption{
		cel.CrossTypeNumericComparisons(true),
		cel.Function("net24",
			cel.Overload("net24_string", []*cel.Type{cel.StringType}, cel.StringType,
				cel.UnaryBinding(func(v ref.Val) ref.Val {
					s, ok := v.(types.String)
					if !ok {
						return types.MaybeNoSuchOverloadErr(v)
					}
					return types.String(event.ClientNet(string(s)))
				}))),
		cel.Function("in_cidr",
			cel.Overload("in_cidr_string_string", []*cel.Type{cel.StringType, cel.StringType}, cel.BoolType,
				cel.BinaryBinding(func(ip, cidr ref.Val) ref.Val {
					is, ok1 := ip.(types.String)
					cs, ok2 := cidr.(types.String)
					if !ok1 || !ok2 {
						return types.MaybeNoSuchOverloadErr(ip)
					}
					p, err := netip.ParsePrefix(string(cs))
					if err != nil {
						return types.NewErr("in_cidr: %v", err)
					}
					a, err := netip.ParseAddr(string(is))
					if err != nil {
						return types.False
					}
					return types.Bool(p.Contains(a.Unmap()))
				}))),
	}
	for _, f := range eventFields {
		opts = append(opts, cel.Variable(f.Name, celType(f.Kind)))
	}
	opts = append(opts, cel.Variable("profile", profileCELType), cel.Variable("key_kind", cel.StringType))
	for name := range profileMethods {
		opts = append(opts, profMethod(name))
	}
	opts = append(opts, profCountryMethods()...)
	if agg {
		for name, k := range aggregateVars {
			opts = append(opts, cel.Variable(name, celType(k)))
		}
	}
	return cel.NewEnv(opts...)
}

// sizeEstimator bounds the sizes of variables so the static cost of string
// functions is finite.
type sizeEstimator struct{}

func (sizeEstimator) EstimateCallCost(string, string, *cost.AstNode, []cost.AstNode) *cost.CallEstimate {
	return nil
}

func (sizeEstimator) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	p := n.Path()
	if len(p) == 0 {
		return nil
	}
	switch p[0] {
	case "distinct", "sum":
		return &cost.SizeEstimate{Min: 0, Max: 8}
	}
	return &cost.SizeEstimate{Min: 0, Max: 1024}
}

// expr is one compiled expression: the CEL program and, when the
// expression is in the native subset, an equivalent Go closure.
type expr struct {
	src     string
	prg     cel.Program
	native  nexpr
	hasNat  bool
	cost    uint64
	outKind valKind
}

// compileError is a CEL problem, with the line inside the expression.
type compileError struct {
	line int // 1-based line inside the expression source
	msg  string
	err  error
}

func (e *compileError) Error() string { return e.msg }
func (e *compileError) Unwrap() error { return e.err }

type compiler struct {
	env, aggEnv *cel.Env
	opt         *cel.StaticOptimizer
	costLimit   uint64
}

func newCompiler(costLimit uint64) (*compiler, error) {
	env, err := newEnv(false)
	if err != nil {
		return nil, err
	}
	aggEnv, err := newEnv(true)
	if err != nil {
		return nil, err
	}
	folder, err := cel.NewConstantFoldingOptimizer()
	if err != nil {
		return nil, err
	}
	opt, err := cel.NewStaticOptimizer(folder)
	if err != nil {
		return nil, err
	}
	if costLimit == 0 {
		costLimit = DefaultCostLimit
	}
	return &compiler{env: env, aggEnv: aggEnv, opt: opt, costLimit: costLimit}, nil
}

// compile checks, optimises, costs and plans src. want is the required
// output kind (0: string, int or bool, for group_by).
func (c *compiler) compile(src string, agg bool, want valKind, fields featureFields) (*expr, error) {
	env := c.env
	if agg {
		env = c.aggEnv
	}
	if strings.TrimSpace(src) == "" {
		return nil, &compileError{line: 1, msg: "empty expression"}
	}
	ast, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		return nil, celIssue(iss)
	}
	out := ast.OutputType()
	var kind valKind
	switch {
	case out.IsExactType(cel.BoolType):
		kind = kBool
	case out.IsExactType(cel.StringType):
		kind = kStr
	case out.IsExactType(cel.IntType):
		kind = kInt
	case out.IsExactType(cel.DoubleType):
		kind = kDbl
	case out.IsExactType(cel.DynType) && want != 0:
		kind = want // profile.<field> is typed dyn; its value has the field's type
	}
	if want != 0 && kind != want {
		return nil, &compileError{line: 1, msg: fmt.Sprintf("expression has type %s, want %s", out, celType(want))}
	}
	if want == 0 && kind != kStr && kind != kInt && kind != kBool {
		return nil, &compileError{line: 1, msg: fmt.Sprintf("group_by expression has type %s, want string, int or bool", out)}
	}
	if err := checkFeatureRefs(ast, fields); err != nil {
		return nil, err
	}
	// Cost the expression as written before optimising: constant folding
	// evaluates constant subexpressions, so an expression that is costly
	// but constant (nested comprehensions over literal lists) must be
	// refused before folding runs it, not costed after folding made it a
	// literal.
	if _, err := c.estimate(env, ast); err != nil {
		return nil, err
	}
	ast, iss = c.opt.Optimize(env, ast)
	if iss != nil && iss.Err() != nil {
		return nil, celIssue(iss)
	}
	est, err := c.estimate(env, ast)
	if err != nil {
		return nil, err
	}
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, &compileError{line: 1, msg: err.Error()}
	}
	x := &expr{src: src, prg: prg, cost: est.Max, outKind: kind}
	x.native, x.hasNat = translate(ast, fields)
	if out.IsExactType(cel.DynType) && want != 0 && (!x.hasNat || x.native.t != want) {
		// A profile field of another type, or a dyn the engine cannot type.
		t := "dyn"
		if x.hasNat {
			t = celType(x.native.t).String()
		}
		return nil, &compileError{line: 1, msg: fmt.Sprintf("expression has type %s, want %s", t, celType(want))}
	}
	return x, nil
}

// estimate returns ast's static cost, an error when it exceeds the limit.
func (c *compiler) estimate(env *cel.Env, ast *cel.Ast) (cost.CostEstimate, error) {
	est, err := env.EstimateCost(ast, sizeEstimator{})
	if err != nil {
		return est, &compileError{line: 1, msg: "cost estimate: " + err.Error()}
	}
	if est.Max > c.costLimit {
		return est, &compileError{line: 1, err: ErrTooCostly,
			msg: fmt.Sprintf("static cost up to %d exceeds the limit %d (simplify the expression or raise the limit)", est.Max, c.costLimit)}
	}
	return est, nil
}

// ErrTooCostly marks an expression whose static cost exceeds the limit.
var ErrTooCostly = errors.New("expression too costly")

func celIssue(iss *cel.Issues) error {
	errs := iss.Errors()
	if len(errs) == 0 {
		return &compileError{line: 1, msg: iss.Err().Error()}
	}
	e := errs[0]
	line := e.Location.Line()
	if line < 1 {
		line = 1
	}
	msg := fmt.Sprintf("%s (column %d)", e.Message, e.Location.Column()+1)
	if len(errs) > 1 {
		msg += fmt.Sprintf(" and %d more", len(errs)-1)
	}
	return &compileError{line: line, msg: msg}
}

// activation resolves CEL variables straight from the event and the group
// being evaluated, without building a map.
type activation struct {
	ev   *event.Event
	agg  *aggView
	prof profView
	kind func(keyID string) string // nil: every key is a server key
}

// keyKind is the event's key kind: server, browser, mobile or batch;
// server when unknown.
func (a *activation) keyKind() string {
	if a.kind == nil || a.ev.KeyID == "" {
		return "server"
	}
	if k := a.kind(a.ev.KeyID); k != "" {
		return k
	}
	return "server"
}

var _ interpreter.Activation = (*activation)(nil)

func (a *activation) Parent() interpreter.Activation { return nil }

func (a *activation) ResolveName(name string) (any, bool) {
	if f, ok := eventFieldByName[name]; ok {
		switch f.Kind {
		case kStr:
			return types.String(f.Str(a.ev)), true
		case kInt:
			return types.Int(f.Int(a.ev)), true
		case kTime:
			return types.Timestamp{Time: a.ev.Time}, true
		}
	}
	switch name {
	case "profile":
		return &profVal{a.prof}, true
	case "key_kind":
		return types.String(a.keyKind()), true
	}
	if a.agg == nil {
		return nil, false
	}
	switch name {
	case "count":
		return types.Int(a.agg.count()), true
	case "baseline":
		return types.Double(a.agg.baseline()), true
	case "window_seconds":
		return types.Int(a.agg.windowSeconds()), true
	case "rate":
		return types.Double(a.agg.rate()), true
	case "group":
		return types.String(a.agg.groupKey()), true
	case "distinct":
		m := make(map[string]int64, len(a.agg.r.distinct))
		for i, f := range a.agg.r.distinct {
			m[f.Name] = a.agg.distinct(i)
		}
		return types.DefaultTypeAdapter.NativeToValue(m), true
	case "sum":
		m := make(map[string]int64, len(a.agg.r.sums))
		for i, f := range a.agg.r.sums {
			m[f.Name] = a.agg.sum(i)
		}
		return types.DefaultTypeAdapter.NativeToValue(m), true
	}
	return nil, false
}

// evalBool runs x natively when possible, else through CEL; a CEL error
// counts as false (and is reported through errs).
func (x *expr) evalBool(a *activation, errs *uint64) bool {
	if x.hasNat {
		return x.native.b(a)
	}
	v, _, err := x.prg.Eval(a)
	if err != nil {
		*errs++
		return false
	}
	b, ok := v.(types.Bool)
	return ok && bool(b)
}

// evalKey appends the value of a group_by expression to buf.
func (x *expr) evalKey(a *activation, buf []byte, errs *uint64) []byte {
	if x.hasNat {
		switch x.native.t {
		case kStr:
			if x.native.ap != nil {
				return x.native.ap(a, buf)
			}
			return append(buf, x.native.s(a)...)
		case kInt:
			return appendInt(buf, x.native.i(a))
		case kBool:
			if x.native.b(a) {
				return append(buf, "true"...)
			}
			return append(buf, "false"...)
		}
	}
	v, _, err := x.prg.Eval(a)
	if err != nil {
		*errs++
		return append(buf, "<error>"...)
	}
	return fmt.Appendf(buf, "%v", v.Value())
}

func appendInt(buf []byte, v int64) []byte {
	if v < 0 {
		buf = append(buf, '-')
		v = -v
	}
	var tmp [20]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(buf, tmp[i:]...)
}
