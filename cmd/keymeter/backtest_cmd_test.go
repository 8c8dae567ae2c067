package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/evaluate"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/loadgen"
)

func TestBacktestBadLinesAndLabels(t *testing.T) {
	dir := t.TempDir()
	var nd strings.Builder
	for i := range 6 {
		fmt.Fprintf(&nd, `{"id":"e%d","time":"2026-11-24T10:0%d:00Z","key_id":"key_old","outcome":"revoked","client_ip":"198.51.100.7","country":"DE","asn":64500}`+"\n", i, i)
		if i == 2 {
			nd.WriteString(`{"id":"bad","time":"2026-11-24T10:02:30Z","outcome":"valid","asn":"x"}` + "\n")
		}
	}
	events := filepath.Join(dir, "events.ndjson")
	labels := filepath.Join(dir, "labels.ndjson")
	_ = os.WriteFile(events, []byte(nd.String()), 0o644)
	_ = os.WriteFile(labels, []byte(`{"id":"revoked-1","scenario":"revoked-key-tried","group":"key_old","start":"2026-11-24T10:00:00Z","end":"2026-11-24T10:06:00Z","intended_action":"alert","forbidden_actions":[]}`+"\n"), 0o644)
	run := func(args ...string) (string, error) {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(append([]string{"rules", "backtest", "--rules", "../../rules/revoked-key-tried.yaml", "--events", events}, args...))
		err := root.Execute()
		return out.String(), err
	}
	// By default the first bad line stops the replay, with a report of what was replayed.
	out, err := run("--labels", labels)
	if err == nil || !strings.Contains(err.Error(), "events.ndjson:4: field asn") {
		t.Fatalf("want an error naming line 4 and field asn, got %v", err)
	}
	if !strings.Contains(out, "backtest events=3 ") || !strings.Contains(out, "1 bad lines asn=1") {
		t.Fatalf("no report before the bad line:\n%s", out)
	}
	// --skip-invalid goes on, counts the line and scores the labels.
	out, err = run("--labels", labels, "--skip-invalid")
	if err != nil {
		t.Fatal(err)
	}
	last := out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]
	for _, want := range []string{"backtest events=6 ", "bad_lines=1", "labels=1 detected=1 intended=1", "benign_keys_revoked_or_suspended=0", "passed=true"} {
		if !strings.Contains(last, want) {
			t.Errorf("summary lacks %q: %s", want, last)
		}
	}
	if !strings.Contains(out, "events.ndjson:4: field asn: wrong type") {
		t.Errorf("the bad line is not shown with its reason:\n%s", out)
	}
	// A label file with an error names its line and field.
	_ = os.WriteFile(labels, []byte("\n{\"id\":\"x\",\"group\":\"k\",\"start\":\"2026-11-24T10:00:00Z\",\"end\":\"2026-11-24T10:06:00Z\",\"intended_action\":\"ban\"}\n"), 0o644)
	if _, err := run("--labels", labels); err == nil || !strings.Contains(err.Error(), "labels.ndjson: line 2: field intended_action") {
		t.Fatalf("bad label file: %v", err)
	}
}

func TestRulesDiff(t *testing.T) {
	dir := t.TempDir()
	var nd strings.Builder
	for i := range 6 {
		fmt.Fprintf(&nd, `{"id":"e%d","time":"2026-11-24T10:0%d:00Z","key_id":"key_old","outcome":"revoked","client_ip":"198.51.100.7","country":"DE","asn":64500}`+"\n", i, i)
	}
	events := filepath.Join(dir, "events.ndjson")
	_ = os.WriteFile(events, []byte(nd.String()), 0o644)
	rule, err := os.ReadFile("../../rules/revoked-key-tried.yaml")
	if err != nil {
		t.Fatal(err)
	}
	newDir := filepath.Join(dir, "new")
	_ = os.Mkdir(newDir, 0o755)
	// The new set alerts only from 10 tries: the alert on key_old goes away.
	changed := strings.Replace(string(rule), "when: count >= 3", "when: count >= 10", 1)
	if changed == string(rule) {
		t.Fatal("the rule file changed: adjust the test")
	}
	changed = changed[:strings.Index(changed, "tests:")]
	_ = os.WriteFile(filepath.Join(newDir, "r.yaml"), []byte(changed), 0o644)
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"rules", "diff", "--old", "../../rules/revoked-key-tried.yaml", "--new", newDir, "--events", events})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if !strings.Contains(s, "key_old") || !strings.Contains(s, "enforce/alert") || !strings.Contains(s, "old_decisions=1 new_decisions=0 rows_changed=1 only_old=1 only_new=0") {
		t.Fatalf("diff output:\n%s", s)
	}
}

func TestLoadgenEvalWritesSetAndLabels(t *testing.T) {
	if testing.Short() {
		t.Skip("generates six hours of traffic")
	}
	dir := t.TempDir()
	events, labels, keys := filepath.Join(dir, "e.ndjson"), filepath.Join(dir, "l.ndjson"), filepath.Join(dir, "k.ndjson")
	root := newRootCmd()
	root.SetArgs([]string{"loadgen", "--eval", "--days", "0.25", "--scale", "0.05", "--attacks", "1", "--seed", "3",
		"--out", events, "--labels-out", labels, "--keys-out", keys})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	ls, err := evaluate.ReadLabelFile(labels)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != len(loadgen.EvalScenarios) {
		t.Fatalf("%d labels, want %d", len(ls), len(loadgen.EvalScenarios))
	}
	f, err := os.Open(events)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd := event.NewNDJSONReader(f)
	n := 0
	var last time.Time
	for {
		e, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if e.Time.Before(last) {
			t.Fatalf("line %d out of time order", rd.Line())
		}
		last = e.Time
		n++
	}
	if n < 10000 {
		t.Fatalf("only %d events", n)
	}
	if b, _ := os.ReadFile(keys); !bytes.Contains(b, []byte(`"persona":"mobile-sdk"`)) {
		t.Fatal("keys file lacks the mobile-SDK keys")
	}
}
