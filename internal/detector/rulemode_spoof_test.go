package detector

import (
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

const uaRule = `id: ua-abuse
version: 1
name: ua abuse
severity: low
mode: enforce
match: key_id != ""
aggregate: {group_by: [user_agent], window: 1h}
actions:
  - {type: alert, when: "count >= 1"}
`

// TestClientGroupCannotSwitchRuleMode: a detection decision grouped by a
// client-chosen value (here User-Agent: keymeter.rule_mode) is neither
// emitted with the reserved group nor taken for a rule-mode override, even
// when forged with that group (regression: it pinned the rule to dry_run
// without audit on every detector following the decisions log).
func TestClientGroupCannotSwitchRuleMode(t *testing.T) {
	rules, err := detect.ParseFile("ua.yaml", []byte(uaRule))
	if err != nil {
		t.Fatal(err)
	}
	set, err := detect.Compile(rules, detect.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []*keymeterv1.Decision
	e, err := detect.New(detect.Config{Sink: detect.SinkFunc(func(d *keymeterv1.Decision) { got = append(got, proto.Clone(d).(*keymeterv1.Decision)) }),
		Allowlist: detect.Allowlist{Keys: []string{"key_allowed"}}}, set)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	now := time.Now()
	// A client of an allowlisted key (so its decision is dry_run) sends the
	// reserved group as its user agent.
	e.Process(&event.Event{ID: "e1", Time: now, KeyID: "key_allowed", Outcome: event.OutcomeValid, ClientIP: "192.0.2.1", UserAgent: RuleModeGroup})
	e.Flush()
	if len(got) != 1 {
		t.Fatalf("decisions: %d, want 1", len(got))
	}
	if got[0].Group == RuleModeGroup || got[0].Group != `\`+RuleModeGroup {
		t.Fatalf("the engine emitted group %q for the client's value %q, want it escaped", got[0].Group, RuleModeGroup)
	}
	for name, d := range map[string]*keymeterv1.Decision{
		"as emitted": got[0],
		// A detection decision with the reserved group (as the old engine
		// emitted it), and one also without an action.
		"reserved group": withGroup(got[0], RuleModeGroup, got[0].Action),
		"no action":      withGroup(got[0], RuleModeGroup, keymeterv1.Action_ACTION_UNSPECIFIED),
	} {
		raw, _ := proto.Marshal(d)
		if ApplyRuleMode(e, raw, log) {
			t.Errorf("%s: ApplyRuleMode took a detection decision for a rule-mode override", name)
		}
	}
	e.Process(&event.Event{ID: "e2", Time: now, KeyID: "key_victim", Outcome: event.OutcomeValid, ClientIP: "192.0.2.9", UserAgent: "curl/8"})
	e.Flush()
	if m := got[len(got)-1].Mode; m != keymeterv1.Mode_MODE_ENFORCE {
		t.Fatalf("after the spoof the rule (enforce in its file) fired in %v", m)
	}
	// A real switch still applies.
	raw, err := RuleModeMessage("ua-abuse", "dry_run", "admin", now)
	if err != nil || !ApplyRuleMode(e, raw, log) {
		t.Fatalf("a real switch was not applied: %v", err)
	}
	e.Process(&event.Event{ID: "e3", Time: now, KeyID: "key_other", Outcome: event.OutcomeValid, ClientIP: "192.0.2.10", UserAgent: "wget/1"})
	e.Flush()
	if m := got[len(got)-1].Mode; m != keymeterv1.Mode_MODE_DRY_RUN {
		t.Fatalf("after a real switch to dry_run the rule fired in %v", m)
	}
}

func withGroup(d *keymeterv1.Decision, group string, a keymeterv1.Action) *keymeterv1.Decision {
	c := proto.Clone(d).(*keymeterv1.Decision)
	c.Group, c.Action = group, a
	return c
}

func TestEscapeGroupOneToOne(t *testing.T) {
	seen := map[string]string{}
	for _, g := range []string{RuleModeGroup, `\` + RuleModeGroup, `\\` + RuleModeGroup, "curl/8", `\`, ""} {
		out := detect.EscapeGroup(g)
		if out == RuleModeGroup {
			t.Errorf("EscapeGroup(%q) is the reserved group", g)
		}
		if prev, ok := seen[out]; ok {
			t.Errorf("EscapeGroup(%q) = EscapeGroup(%q) = %q", g, prev, out)
		}
		seen[out] = g
	}
}
