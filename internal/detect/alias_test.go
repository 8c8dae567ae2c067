package detect

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

// aliasBomb builds a "billion laughs" document: each level is a list of ten
// aliases of the previous level, so expanding it costs 10^levels nodes.
func aliasBomb(levels int) string {
	var b strings.Builder
	b.WriteString("a0: &a0 [\"xxxxxxxxxxxxxxxx\"]\n")
	for i := 1; i <= levels; i++ {
		prev := "*a" + strconv.Itoa(i-1)
		b.WriteString("a" + strconv.Itoa(i) + ": &a" + strconv.Itoa(i) + " [" + strings.Repeat(prev+",", 9) + prev + "]\n")
	}
	b.WriteString("id: x\n")
	return b.String()
}

// TestRuleFilesRefuseAliases: anchors and aliases are refused with file:line
// before any expansion, by the schema check and by the parser (regression:
// a 373-byte file of nested aliases cost 500 MB in ValidateSchema).
func TestRuleFilesRefuseAliases(t *testing.T) {
	src := aliasBomb(4)
	for name, check := range map[string]func() error{
		"ValidateSchema": func() error { return ValidateSchema("bomb.yaml", []byte(src)) },
		"ParseFile":      func() error { _, err := ParseFile("bomb.yaml", []byte(src)); return err },
	} {
		err := check()
		var le *LoadError
		if !errors.As(err, &le) || le.Line != 1 || !strings.Contains(err.Error(), "anchors and aliases") {
			t.Errorf("%s: got %v, want a LoadError at bomb.yaml:1 refusing anchors and aliases", name, err)
		}
	}
	merge := "- id: base\n  x: &b {a: 1}\n- id: other\n  <<: *b\n"
	if _, err := ParseFile("m.yaml", []byte(merge)); err == nil || !strings.Contains(err.Error(), "m.yaml:2") {
		t.Errorf("merge key: got %v, want a refusal at m.yaml:2", err)
	}
}

// TestInlineTestEventCap: a sequence's count and the events of all the
// file's tests are capped at MaxTestEvents, refused with file:line by the
// parser and by the schema (regression: {count: 3000000, every: 1ms} cost
// 2.8 GB when the tests ran).
func TestInlineTestEventCap(t *testing.T) {
	rule := func(id string, count int) string {
		return "- id: " + id + "\n  version: 1\n  name: n\n  description: d\n  severity: low\n  mode: dry_run\n" +
			"  match: outcome == \"valid\"\n  aggregate: {group_by: [key_id], window: 1m}\n  actions:\n    - {type: alert, when: count > 5}\n" +
			"  tests:\n    - name: many\n      events:\n        - {count: " + strconv.Itoa(count) + ", every: 1ms}\n      expect: []\n"
	}
	if _, err := ParseFile("ok.yaml", []byte(rule("a", 10))); err != nil {
		t.Fatalf("a small test: %v", err)
	}
	big := rule("a", 3_000_000)
	if _, err := ParseFile("big.yaml", []byte(big)); err == nil || !strings.Contains(err.Error(), "big.yaml:14") || !strings.Contains(err.Error(), "100000") {
		t.Errorf("count 3,000,000: got %v, want a refusal at big.yaml:14 naming the cap", err)
	}
	if err := ValidateSchema("big.yaml", []byte(big)); err == nil || !strings.Contains(err.Error(), "big.yaml:14") {
		t.Errorf("schema, count 3,000,000: got %v, want a refusal at big.yaml:14", err)
	}
	// Two rules of 60,000 each: fine alone, over the cap as one file.
	two := rule("a", 60_000) + rule("b", 60_000)
	if _, err := ParseFile("two.yaml", []byte(two)); err == nil || !strings.Contains(err.Error(), "two.yaml:27") || !strings.Contains(err.Error(), "rule b") {
		t.Errorf("two rules of 60,000: got %v, want a refusal at two.yaml:27 (rule b's test)", err)
	}
	if _, err := GenerateEvents(TestCase{Name: "x", Events: []EventSeq{{Count: MaxTestEvents + 1}}}); err == nil {
		t.Error("GenerateEvents ran a test over the cap")
	}
}
