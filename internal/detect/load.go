package detect

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml"
	yast "github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// LoadError is a problem in a rule file: where it is and what is wrong.
type LoadError struct {
	File  string
	Line  int
	Field string // e.g. "actions[1].when"; empty for syntax errors
	Msg   string
	Err   error // the cause, for errors.Is (e.g. ErrTooCostly)
}

func (e *LoadError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

func (e *LoadError) Unwrap() error { return e.Err }

// positions maps a field path inside one rule ("match",
// "actions[0].when") to its line, and remembers block scalars, whose text
// starts on the next line.
type positions struct {
	line  map[string]int
	block map[string]bool
}

func (p positions) of(path string) int {
	for path != "" {
		if l, ok := p.line[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return p.line[""]
}

// exprLine is the file line of line n (1-based) of the expression at path.
func (p positions) exprLine(path string, n int) int {
	l := p.of(path)
	if p.block[path] {
		return l + n
	}
	return l + n - 1
}

func collectPositions(n yast.Node, prefix string, p positions) {
	if n == nil {
		return
	}
	if tk := n.GetToken(); tk != nil && tk.Position != nil {
		if _, seen := p.line[prefix]; !seen {
			p.line[prefix] = tk.Position.Line
		}
	}
	switch v := n.(type) {
	case *yast.MappingNode:
		for _, mv := range v.Values {
			collectMappingValue(mv, prefix, p)
		}
	case *yast.MappingValueNode:
		collectMappingValue(v, prefix, p)
	case *yast.SequenceNode:
		for i, x := range v.Values {
			collectPositions(x, fmt.Sprintf("%s[%d]", prefix, i), p)
		}
	case *yast.LiteralNode:
		p.block[prefix] = true
	case *yast.TagNode:
		collectPositions(v.Value, prefix, p)
	case *yast.AnchorNode:
		collectPositions(v.Value, prefix, p)
	}
}

func collectMappingValue(mv *yast.MappingValueNode, prefix string, p positions) {
	key := mv.Key.GetToken().Value
	path := key
	if prefix != "" {
		path = prefix + "." + key
	}
	if tk := mv.Key.GetToken(); tk != nil && tk.Position != nil {
		p.line[path] = tk.Position.Line
	}
	collectPositions(mv.Value, path, p)
}

var durationKeys = map[string]bool{"window": true, "suppress": true, "duration": true, "corroboration_window": true, "at": true, "every": true}

// checkDurations validates duration fields before decoding so that a bad
// one is reported with its line (the decoder loses positions for
// custom types).
func checkDurations(file string, n yast.Node, errs *[]error) {
	switch v := n.(type) {
	case *yast.MappingNode:
		for _, mv := range v.Values {
			checkDurations(file, mv, errs)
		}
	case *yast.MappingValueNode:
		key := v.Key.GetToken().Value
		if durationKeys[key] {
			if tk := v.Value.GetToken(); tk != nil && v.Value.Type() != yast.MappingType && v.Value.Type() != yast.SequenceType {
				if _, err := ParseDuration(tk.Value); err != nil {
					*errs = append(*errs, &LoadError{File: file, Line: tk.Position.Line, Field: key, Msg: err.Error()})
				}
			}
		}
		checkDurations(file, v.Value, errs)
	case *yast.SequenceNode:
		for _, x := range v.Values {
			checkDurations(file, x, errs)
		}
	}
}

// ParseFile decodes the rules of one file: one rule per YAML document, or a
// list of rules in a document. Unknown fields, type errors and bad values
// are refused with file:line.
func ParseFile(file string, data []byte) (rules []*Rule, err error) {
	// The YAML library can panic on some malformed input (found by
	// FuzzParseFile); refuse the file instead of crashing the detector.
	defer func() {
		if p := recover(); p != nil {
			rules, err = nil, &LoadError{File: file, Msg: fmt.Sprintf("malformed YAML (decoder failed: %v)", p)}
		}
	}()
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, yamlError(file, err)
	}
	var errs []error
	for _, doc := range f.Docs {
		body := doc.Body
		if body == nil {
			continue
		}
		if err := refuseAliases(file, body); err != nil {
			errs = append(errs, err)
			continue
		}
		checkDurations(file, body, &errs)
		if len(errs) > 0 {
			continue
		}
		var nodes []yast.Node
		switch b := body.(type) {
		case *yast.SequenceNode:
			nodes = b.Values
		case *yast.MappingNode, *yast.MappingValueNode:
			nodes = []yast.Node{body}
		case *yast.CommentNode:
			continue
		default:
			errs = append(errs, &LoadError{File: file, Line: body.GetToken().Position.Line,
				Msg: fmt.Sprintf("a document must be a rule (a mapping) or a list of rules, not %s", body.Type())})
			continue
		}
		for _, n := range nodes {
			r := new(Rule)
			if err := yaml.NodeToValue(n, r, yaml.Strict()); err != nil {
				errs = append(errs, yamlError(file, err))
				continue
			}
			p := positions{line: map[string]int{}, block: map[string]bool{}}
			collectPositions(n, "", p)
			r.File, r.Line = file, p.line[""]
			if err := validate(r, p); err != nil {
				errs = append(errs, err)
				continue
			}
			r.pos = p
			rules = append(rules, r)
		}
	}
	if err := checkTestEvents(file, rules); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return rules, nil
}

// MaxTestEvents bounds the events the inline tests of one file generate
// (each sequence's count, and their sum over all the file's tests): a test
// of a million events would cost gigabytes when run, by the detector's
// rules test or the console's backtest.
const MaxTestEvents = 100_000

// checkTestEvents refuses a file whose inline tests generate more than
// MaxTestEvents events, naming the test that crosses the cap.
func checkTestEvents(file string, rules []*Rule) error {
	total := 0
	for _, r := range rules {
		for i, tc := range r.Tests {
			for _, seq := range tc.Events {
				total += max(seq.Count, 1)
			}
			if total > MaxTestEvents {
				return &LoadError{File: file, Line: r.pos.of(fmt.Sprintf("tests[%d]", i)),
					Msg: fmt.Sprintf("rule %s: the inline tests of this file generate over %d events", r.ID, MaxTestEvents)}
			}
		}
	}
	return nil
}

func yamlError(file string, err error) error {
	var ye yaml.Error
	if errors.As(err, &ye) {
		line := 0
		if tk := ye.GetToken(); tk != nil && tk.Position != nil {
			line = tk.Position.Line
		}
		return &LoadError{File: file, Line: line, Msg: ye.GetMessage(), Err: err}
	}
	return &LoadError{File: file, Msg: err.Error(), Err: err}
}

// validate checks what the YAML types cannot: required fields and enums.
func validate(r *Rule, p positions) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &LoadError{File: r.File, Line: p.of(field), Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	validateHeader(r, bad)
	validateAggregate(r.Aggregate, bad)
	validateActions(r.Actions, bad)
	validateTests(r.Tests, bad)
	return errors.Join(errs...)
}

// badFunc records a problem of a rule field.
type badFunc func(field, format string, args ...any)

// validateHeader checks the rule's id, version, name, severity, mode and
// match.
func validateHeader(r *Rule, bad badFunc) {
	if r.ID == "" {
		bad("id", "required")
	} else if strings.ContainsAny(r.ID, " \t/") {
		bad("id", "%q: use letters, digits, '-', '_' and '.'", r.ID)
	}
	if r.Version == 0 {
		bad("version", "required, a positive integer bumped on every change")
	}
	if r.Name == "" {
		bad("name", "required")
	}
	if !oneOf(r.Severity, severities) {
		bad("severity", "%q (accepted: %s)", r.Severity, strings.Join(severities, ", "))
	}
	if !oneOf(r.Mode, modes) {
		bad("mode", "%q (accepted: %s)", r.Mode, strings.Join(modes, ", "))
	}
	if r.Match == "" {
		bad("match", "required: a CEL expression over one event (use `true` to match all)")
	}
}

// validateAggregate checks the aggregate block.
func validateAggregate(ag Aggregate, bad badFunc) {
	if ag.Window <= 0 {
		bad("aggregate.window", "required: a positive duration such as 10m")
	}
	if ag.MaxGroups < 0 {
		bad("aggregate.max_groups", "must not be negative")
	}
	if ag.DistinctCap < 0 {
		bad("aggregate.distinct_cap", "must not be negative")
	}
	for i, f := range ag.Distinct {
		if _, ok := eventFieldByName[f]; !ok || f == "time" {
			bad(fmt.Sprintf("aggregate.distinct[%d]", i), "unknown event field %q (accepted: %s)", f, fieldNames(false))
		}
	}
	for i, f := range ag.Sum {
		ef, ok := eventFieldByName[f]
		if !ok || ef.Kind != kInt {
			bad(fmt.Sprintf("aggregate.sum[%d]", i), "not a numeric event field: %q (accepted: %s)", f, fieldNames(true))
		}
	}
	if b := ag.Baseline; b != nil {
		if b.Default < 0 {
			bad("aggregate.baseline.default", "must not be negative")
		}
		if b.Alpha < 0 || b.Alpha > 1 {
			bad("aggregate.baseline.alpha", "must be in (0, 1]")
		}
	}
}

// validateActions checks the actions.
func validateActions(actions []ActionSpec, bad badFunc) {
	if len(actions) == 0 {
		bad("actions", "at least one action is required")
	}
	for i, a := range actions {
		path := fmt.Sprintf("actions[%d]", i)
		if !oneOf(a.Type, actionTypes) {
			bad(path+".type", "%q (accepted: %s)", a.Type, strings.Join(actionTypes, ", "))
		}
		if a.When == "" {
			bad(path+".when", "required: a CEL condition over the aggregate, e.g. count >= 100")
		}
		switch a.Type {
		case "throttle":
			if a.Rate <= 0 {
				bad(path+".rate", "throttle needs a positive rate (requests per second)")
			}
			if a.Duration <= 0 {
				bad(path+".duration", "throttle needs a duration")
			}
		case "block_ip":
			if a.Duration <= 0 {
				bad(path+".duration", "block_ip needs a duration")
			}
		default:
			if a.Rate != 0 {
				bad(path+".rate", "only throttle takes a rate")
			}
		}
		switch a.Corroboration {
		case "", "required", "none":
		default:
			bad(path+".corroboration", "%q (accepted: required, none)", a.Corroboration)
		}
	}
}

// validateTests checks the inline tests.
func validateTests(tests []TestCase, bad badFunc) {
	for i, tc := range tests {
		path := fmt.Sprintf("tests[%d]", i)
		if tc.Name == "" {
			bad(path+".name", "required")
		}
		if tc.Start != "" {
			if _, err := parseTime(tc.Start); err != nil {
				bad(path+".start", "%v", err)
			}
		}
		for j, seq := range tc.Events {
			sp := fmt.Sprintf("%s.events[%d]", path, j)
			if seq.Count < 0 || seq.Count > MaxTestEvents {
				bad(sp+".count", "must be from 0 to %d", MaxTestEvents)
			}
			if seq.Outcome != "" {
				if _, err := parseOutcome(seq.Outcome); err != nil {
					bad(sp+".outcome", "%v", err)
				}
			}
			for k := range seq.Cycle {
				if _, ok := eventFieldByName[k]; !ok || k == "time" || k == "id" {
					bad(sp+".cycle."+k, "unknown event field %q", k)
				}
			}
		}
		for j, x := range tc.Expect {
			ep := fmt.Sprintf("%s.expect[%d]", path, j)
			if !oneOf(x.Action, actionTypes) {
				bad(ep+".action", "%q (accepted: %s)", x.Action, strings.Join(actionTypes, ", "))
			}
			if x.Mode != "" && x.Mode != "enforce" && x.Mode != "dry_run" {
				bad(ep+".mode", "%q (accepted: enforce, dry_run)", x.Mode)
			}
			if x.Times < 0 {
				bad(ep+".times", "must not be negative")
			}
		}
	}
}

func fieldNames(numeric bool) string {
	var out []string
	for _, f := range eventFields {
		if f.Name == "time" || (numeric && f.Kind != kInt) {
			continue
		}
		out = append(out, f.Name)
	}
	return strings.Join(out, ", ")
}

// RuleFiles expands files and directories into the rule files they hold
// (*.yaml, *.yml, recursively, sorted).
func RuleFiles(paths ...string) ([]string, error) {
	var out []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			out = append(out, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if path != p && strings.HasPrefix(d.Name(), ".") {
					return filepath.SkipDir
				}
				return nil
			}
			if ext := filepath.Ext(path); (ext == ".yaml" || ext == ".yml") && !strings.HasPrefix(d.Name(), ".") {
				out = append(out, path)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Strings(out)
	return out, nil
}

// ParsePaths parses every rule file under paths. Rule ids must be unique.
func ParsePaths(paths ...string) ([]*Rule, error) {
	files, err := RuleFiles(paths...)
	if err != nil {
		return nil, err
	}
	return parseFiles(files, os.ReadFile)
}

// parseFiles parses the rule files read by read, refusing duplicate ids.
func parseFiles(files []string, read func(string) ([]byte, error)) ([]*Rule, error) {
	var rules []*Rule
	var errs []error
	seen := map[string]*Rule{}
	for _, f := range files {
		data, err := read(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rs, err := ParseFile(f, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range rs {
			if prev, dup := seen[r.ID]; dup {
				errs = append(errs, &LoadError{File: r.File, Line: r.Line, Field: "id",
					Msg: fmt.Sprintf("duplicate rule id %q (also at %s:%d)", r.ID, prev.File, prev.Line)})
				continue
			}
			seen[r.ID] = r
			rules = append(rules, r)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return rules, nil
}

// LoadPaths parses and compiles the rules under paths into a rule set.
func LoadPaths(opts CompileOptions, paths ...string) (*RuleSet, error) {
	rules, err := ParsePaths(paths...)
	if err != nil {
		return nil, err
	}
	return Compile(rules, opts)
}

// aliasFinder stops a walk at the first YAML anchor or alias.
type aliasFinder struct{ found yast.Node }

func (a *aliasFinder) Visit(n yast.Node) yast.Visitor {
	if a.found != nil {
		return nil
	}
	switch n.(type) {
	case *yast.AnchorNode, *yast.AliasNode:
		a.found = n
		return nil
	}
	return a
}

// refuseAliases rejects YAML anchors (&name) and aliases (*name, <<: *name)
// before a document is decoded: expanding nested aliases costs memory
// exponential in the file's size ("billion laughs"), and rule files have no
// need for them.
func refuseAliases(file string, body yast.Node) error {
	var a aliasFinder
	yast.Walk(&a, body)
	if a.found == nil {
		return nil
	}
	line := 0
	if tk := a.found.GetToken(); tk != nil && tk.Position != nil {
		line = tk.Position.Line
	}
	return &LoadError{File: file, Line: line,
		Msg: "YAML anchors and aliases (&name, *name) are not allowed in rule files"}
}
