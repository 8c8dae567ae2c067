package detect

import (
	"fmt"
	"io"
	"strings"
)

// LintResult is what Lint found.
type LintResult struct {
	Files    int // rule files checked
	Problems int // lines of problems written
}

// Lint checks the rule files under paths (JSON Schema, strict decoding,
// CEL compilation and static cost) and writes every problem to w, one per
// line with file:line; with none, it writes one line per rule: id,
// version, mode, where, cost ceiling, native or interpreted path, tests.
func Lint(w io.Writer, costLimit uint64, paths ...string) (LintResult, error) {
	files, err := RuleFiles(paths...)
	if err != nil {
		return LintResult{}, err
	}
	if len(files) == 0 {
		return LintResult{}, fmt.Errorf("no rule files (*.yaml, *.yml) under %s", strings.Join(paths, ", "))
	}
	res := LintResult{Files: len(files)}
	report := func(err error) {
		for _, e := range FlattenErrors(err) {
			fmt.Fprintln(w, e)
			res.Problems++
		}
	}
	for _, f := range files {
		report(ValidateSchemaFile(f))
	}
	rules, err := ParsePaths(paths...)
	if err != nil {
		report(err)
	}
	var set *RuleSet
	if rules != nil {
		set, err = Compile(rules, CompileOptions{CostLimit: costLimit})
		report(err)
	}
	if set != nil && res.Problems == 0 {
		native, cost := set.Native(), set.MaxCost()
		for _, r := range set.Rules() {
			path := "native"
			if in := native[r.ID]; len(in) > 0 {
				path = "interpreted: " + strings.Join(in, ", ")
			}
			fmt.Fprintf(w, "ok  %-28s v%-3d %-8s %s:%d  cost<=%d  %s  tests=%d\n",
				r.ID, r.Version, r.Mode, r.File, r.Line, cost[r.ID], path, len(r.Tests))
		}
	}
	return res, nil
}

// FlattenErrors splits an errors.Join tree into its leaves.
func FlattenErrors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, FlattenErrors(e)...)
		}
		return out
	}
	return []error{err}
}
