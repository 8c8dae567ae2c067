package detect

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// bombRule matches with six nested comprehensions over a 20-element
// literal list: constant, so constant folding would evaluate all 20^6
// iterations while compiling (seconds of CPU; seven levels, minutes) and
// then cost the folded literal at 1.
func bombRule() string {
	l := "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]"
	e := l + ".exists(x6, x6 > 20)"
	for i := 5; i >= 1; i-- {
		e = l + ".exists(x" + string(rune('0'+i)) + ", x" + string(rune('0'+i)) + " > 0 && " + e + ")"
	}
	return "id: bomb\nversion: 1\nname: b\nseverity: low\nmode: enforce\n" +
		"match: '" + e + " || outcome == \"missing\"'\n" +
		"aggregate:\n  group_by: [ip]\n  window: 1m\nactions:\n  - type: alert\n    when: count >= 1\n"
}

// An expression's cost is estimated as written, before constant folding
// runs it: the bomb is refused by lint and by the reloader, naming the
// file, the line and the rule (security test 2026-11-27, finding 5: it
// passed lint with cost<=2 after burning 20 s of CPU).
func TestCostEstimatedBeforeFolding(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "bomb.yaml")
	if err := os.WriteFile(file, []byte(bombRule()), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := Lint(&out, DefaultCostLimit, dir)
	if err != nil || res.Problems != 1 {
		t.Fatalf("lint: %+v, %v\n%s", res, err, out.String())
	}
	for _, want := range []string{"bomb.yaml:6: match: rule bomb: static cost up to", "exceeds the limit 10000"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("lint output lacks %q:\n%s", want, out.String())
		}
	}
	var swapped bool
	r := &Reloader{Paths: []string{dir}, Swap: func(*RuleSet) { swapped = true }}
	if ok, err := r.Reload(); ok || swapped || !errors.Is(err, ErrTooCostly) || !strings.Contains(err.Error(), "bomb.yaml:6") ||
		!strings.Contains(err.Error(), "rule bomb") {
		t.Fatalf("reload: swapped %v, %v", ok || swapped, err)
	}
	// A constant expression that is cheap as written still folds.
	x, err := newCompiler(0)
	if err != nil {
		t.Fatal(err)
	}
	e, err := x.compile(`[1,2,3].exists(v, v > 2) && outcome == "missing"`, false, kBool, featureFields{})
	if err != nil || e.cost > 10 {
		t.Fatalf("cheap constant: %v, cost %d", err, func() uint64 {
			if e == nil {
				return 0
			}
			return e.cost
		}())
	}
}
