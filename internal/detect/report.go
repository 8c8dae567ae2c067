package detect

import (
	"fmt"
	"io"
)

// WriteTestReport prints one line per inline test and, for failures, the
// difference between expected and actual firings. It reports whether all
// passed. `keymeter rules test` prints this; its format is golden-tested.
func WriteTestReport(w io.Writer, results []TestResult, verbose bool) bool {
	failed := 0
	rules := map[string]bool{}
	for _, r := range results {
		rules[r.Rule] = true
		if r.Passed() {
			fmt.Fprintf(w, "PASS  %s: %s (%d events)\n", r.Rule, r.Test, r.Events)
			if verbose {
				for _, l := range r.Actual {
					fmt.Fprintf(w, "        %s\n", l)
				}
			}
			continue
		}
		failed++
		fmt.Fprintf(w, "FAIL  %s: %s (%s:%d)\n", r.Rule, r.Test, r.File, r.Line)
		fmt.Fprint(w, r.Diff())
	}
	if failed > 0 {
		fmt.Fprintf(w, "FAIL  %d of %d tests in %d rules failed\n", failed, len(results), len(rules))
		return false
	}
	fmt.Fprintf(w, "ok    %d tests in %d rules\n", len(results), len(rules))
	return true
}
