package detect

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestSchemaCopyInSync(t *testing.T) {
	canon, err := os.ReadFile("../../schemas/rules.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(canon, SchemaJSON) {
		t.Fatal("internal/detect/rules.schema.json differs from schemas/rules.schema.json: copy it over")
	}
}

func TestStarterPackValidatesAgainstSchema(t *testing.T) {
	files, err := RuleFiles("../../rules")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no rule files")
	}
	for _, f := range files {
		if err := ValidateSchemaFile(f); err != nil {
			t.Errorf("%v", err)
		}
	}
}

const goodRule = `id: r1
version: 1
name: test rule
severity: low
mode: enforce
match: outcome == "unknown"
aggregate:
  group_by: [ip]
  window: 1m
actions:
  - type: alert
    when: count >= 3
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error, including file:line
	}{
		{"unknown field", goodRule + "colour: blue\n", []string{"r.yaml:13:", "unknown field \"colour\""}},
		{"unknown nested field", strings.Replace(goodRule, "  window: 1m", "  window: 1m\n  windw: 2m", 1), []string{"r.yaml:10:", "windw"}},
		{"type error", strings.Replace(goodRule, "version: 1", "version: one", 1), []string{"r.yaml:2:"}},
		{"bad duration", strings.Replace(goodRule, "window: 1m", "window: 1 minute", 1), []string{"r.yaml:9:", "invalid duration"}},
		{"bad mode", strings.Replace(goodRule, "mode: enforce", "mode: on", 1), []string{"r.yaml:5:", "mode", "accepted: enforce, dry_run, disabled"}},
		{"bad action", strings.Replace(goodRule, "type: alert", "type: ban", 1), []string{"r.yaml:11:", "actions[0].type"}},
		{"throttle needs rate", strings.Replace(goodRule, "type: alert", "type: throttle\n    duration: 1m", 1), []string{"actions[0].rate"}},
		{"syntax", "id: [\n", []string{"r.yaml:"}},
		{"duplicate id", goodRule + "---\n" + goodRule, []string{"duplicate rule id"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, err := ParseFile("r.yaml", []byte(tt.yaml))
			if err == nil {
				_, err = Compile(rules, CompileOptions{})
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"match not bool", strings.Replace(goodRule, `match: outcome == "unknown"`, `match: outcome`, 1), []string{"r.yaml:6:", "match", "want bool"}},
		{"unknown variable", strings.Replace(goodRule, `match: outcome == "unknown"`, `match: colour == "red"`, 1), []string{"r.yaml:6:", "undeclared reference to 'colour'"}},
		{"type error in when", strings.Replace(goodRule, "when: count >= 3", `when: count >= "3"`, 1), []string{"r.yaml:12:", "actions[0].when", "no matching overload"}},
		{"aggregate var in match", strings.Replace(goodRule, `match: outcome == "unknown"`, `match: count > 1`, 1), []string{"r.yaml:6:", "undeclared reference to 'count'"}},
		{"distinct not computed", strings.Replace(goodRule, "when: count >= 3", "when: distinct.country >= 3", 1), []string{"r.yaml:12:", "distinct.country is not computed"}},
		{"baseline not enabled", strings.Replace(goodRule, "when: count >= 3", "when: count >= 10.0 * baseline", 1), []string{"aggregate has no baseline"}},
		{"block scalar line", strings.Replace(goodRule, `match: outcome == "unknown"`, "match: |\n  outcome == \"unknown\" &&\n  nope", 1), []string{"r.yaml:8:", "nope"}},
		{"too costly", strings.Replace(goodRule, `match: outcome == "unknown"`,
			`match: "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].all(a, [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].all(b, [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].all(c, user_agent.contains(string(a+b+c)))))"`, 1),
			[]string{"r.yaml:6:", "exceeds the limit"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, err := ParseFile("r.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			_, err = Compile(rules, CompileOptions{})
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tt.name == "too costly" && !errors.Is(err, ErrTooCostly) {
				t.Errorf("error is not ErrTooCostly: %v", err)
			}
		})
	}
}

func TestListAndDocuments(t *testing.T) {
	list := "- " + strings.ReplaceAll(strings.TrimSuffix(goodRule, "\n"), "\n", "\n  ") + "\n- " +
		strings.ReplaceAll(strings.TrimSuffix(strings.Replace(goodRule, "id: r1", "id: r2", 1), "\n"), "\n", "\n  ") + "\n"
	docs := goodRule + "---\n" + strings.Replace(goodRule, "id: r1", "id: r2", 1)
	for name, src := range map[string]string{"list": list, "documents": docs} {
		rules, err := ParseFile("r.yaml", []byte(src))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(rules) != 2 || rules[0].ID != "r1" || rules[1].ID != "r2" {
			t.Fatalf("%s: got %d rules", name, len(rules))
		}
		if err := ValidateSchema("r.yaml", []byte(src)); err != nil {
			t.Fatalf("%s: schema: %v", name, err)
		}
	}
}

func TestSchemaErrorsHaveLines(t *testing.T) {
	src := strings.Replace(goodRule, "type: alert", "type: ban", 1)
	err := ValidateSchema("r.yaml", []byte(src))
	if err == nil || !strings.Contains(err.Error(), "r.yaml:11: actions[0].type: schema:") {
		t.Fatalf("got %v", err)
	}
}

func FuzzParseFile(f *testing.F) {
	f.Add([]byte(goodRule))
	for _, name := range []string{"anonymous-burst.yaml", "credential-stuffing.yaml", "geography-shift.yaml"} {
		if b, err := os.ReadFile("../../rules/" + name); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("- id: x\n  version: 1\n---\n[1, 2]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rules, err := ParseFile("fuzz.yaml", data)
		if err != nil {
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		// Whatever parses must compile or be refused with a LoadError.
		if _, err := Compile(rules, CompileOptions{}); err != nil {
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("compile error without position: %v", err)
			}
		}
	})
}
