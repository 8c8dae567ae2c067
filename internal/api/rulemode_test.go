package api_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/detect"
)

// TestRuleMode: an admin switches a rule to dry-run and back; the change is
// audited and shows in GET /v1/rules once the engine has it off the bus; a
// read token is refused, a bad mode names the field, an unknown rule is 404.
func TestRuleMode(t *testing.T) {
	e := setup(t)
	var rl struct {
		Rules []detect.RuleStats `json:"rules"`
	}
	_ = json.Unmarshal(e.call("GET", "/v1/rules", readSecret, nil, 200), &rl)
	var id string
	for _, r := range rl.Rules {
		if r.Mode == "enforce" {
			id = r.ID
			break
		}
	}
	if id == "" {
		t.Fatal("no enforce rule in rules/")
	}
	path := "/v1/rules/" + id + "/mode"
	e.call("PUT", path, readSecret, map[string]any{"mode": "dry_run"}, 403)
	if ae := errorOf(t, string(e.call("PUT", path, adminSecret, map[string]any{"mode": "off"}, 400))); ae.Field != "mode" {
		t.Fatalf("bad mode: %+v", ae)
	}
	if ae := errorOf(t, string(e.call("PUT", path, adminSecret, map[string]any{}, 400))); ae.Field != "mode" {
		t.Fatalf("no mode: %+v", ae)
	}
	e.call("PUT", "/v1/rules/no-such-rule/mode", adminSecret, map[string]any{"mode": "dry_run"}, 404)
	var resp api.RuleModeResponse
	_ = json.Unmarshal(e.call("PUT", path, adminSecret, map[string]any{"mode": "dry_run"}, 202), &resp)
	if resp.ID != id || resp.Mode != "dry_run" {
		t.Fatalf("response %+v", resp)
	}
	// The engine applies it off the bus; poll (the deadline only bounds a failure).
	for end := time.Now().Add(20 * time.Second); ; {
		_ = json.Unmarshal(e.call("GET", "/v1/rules", readSecret, nil, 200), &rl)
		var got *detect.RuleStats
		for i := range rl.Rules {
			if rl.Rules[i].ID == id {
				got = &rl.Rules[i]
			}
		}
		if got != nil && got.Override == "dry_run" && got.Effective == "dry_run" && got.Mode == "enforce" {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("override not shown: %+v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var all api.AuditList
	out := e.call("GET", "/v1/audit?action=rule.mode", readSecret, nil, 200)
	if err := json.Unmarshal(out, &all); err != nil {
		t.Fatal(err)
	}
	if len(all.Entries) != 1 || all.Entries[0].Target != id || all.Entries[0].Role != "admin" || !strings.Contains(string(out), "dry_run") {
		t.Fatalf("audit: %s", out)
	}
}
