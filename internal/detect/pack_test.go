package detect

import (
	"testing"
)

// TestStarterPack runs every inline test of the starter rule pack.
func TestStarterPack(t *testing.T) {
	rules, err := ParsePaths("../../rules")
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) < 6 {
		t.Fatalf("starter pack has %d rules, want at least 6", len(rules))
	}
	if _, err := Compile(rules, CompileOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, res := range RunTests(rules, CompileOptions{}) {
		t.Run(res.Rule+"/"+res.Test, func(t *testing.T) {
			if !res.Passed() {
				t.Errorf("%s:%d: expected vs actual:\n%s", res.File, res.Line, res.Diff())
			}
		})
	}
}
