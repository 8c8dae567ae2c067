package api_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/keymeter/keymeter/internal/api"
)

// TestAuditTrail: every change through the API is recorded with the
// token's label (never the token) and time, and served newest first with
// cursor paging to the read role.
func TestAuditTrail(t *testing.T) {
	e := setup(t)
	var created api.CreatedJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys", adminSecret, map[string]any{"project": "proj_audit", "name": "audited"}, 201), &created)
	id := created.Key.ID
	e.call("PATCH", "/v1/keys/"+id, adminSecret, map[string]any{"rate_limit_per_s": 5.0}, 200)
	e.call("POST", "/v1/keys/"+id+"/suspend", adminSecret, nil, 200)
	e.call("POST", "/v1/keys/"+id+"/resume", adminSecret, nil, 200)
	e.call("POST", "/v1/keys/"+id+"/revoke", adminSecret, map[string]any{"reason": "leaked in a gist"}, 200)
	e.call("POST", "/v1/keys/"+id+"/suspend", adminSecret, nil, 409) // refused: not a change
	e.call("POST", "/v1/keys/"+id+"/suspend", readSecret, nil, 403)  // refused: not a change

	var all api.AuditList
	out := e.call("GET", "/v1/audit?target="+id, readSecret, nil, 200)
	if err := json.Unmarshal(out, &all); err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, en := range all.Entries {
		actions = append(actions, en.Action)
	}
	if got, want := strings.Join(actions, ","), "key.revoke,key.resume,key.suspend,key.update,key.create"; got != want {
		t.Fatalf("actions newest first = %s, want %s\n%s", got, want, out)
	}
	adm, _ := api.ParseToken("admin:" + api.HashToken(adminSecret))
	rev := all.Entries[0]
	if rev.Actor != adm.Label() || rev.Role != "admin" || rev.Project != "proj_audit" || rev.Time.IsZero() {
		t.Fatalf("revoke entry = %+v", rev)
	}
	if d, _ := json.Marshal(rev.Detail); !strings.Contains(string(d), "leaked in a gist") {
		t.Fatalf("revoke detail = %s", d)
	}
	if strings.Contains(string(out), adminSecret) || strings.Contains(string(out), api.HashToken(adminSecret)) ||
		strings.Contains(string(out), created.Secret) {
		t.Fatalf("the audit trail shows a token, its full hash or a key secret: %s", out)
	}

	// Pages of two follow each other without gaps or repeats.
	var seen []string
	cursor := ""
	for range 5 {
		var page api.AuditList
		q := "/v1/audit?target=" + id + "&limit=2"
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		_ = json.Unmarshal(e.call("GET", q, readSecret, nil, 200), &page)
		for _, en := range page.Entries {
			seen = append(seen, en.Action)
		}
		if cursor = page.Next; cursor == "" {
			break
		}
	}
	if strings.Join(seen, ",") != strings.Join(actions, ",") {
		t.Fatalf("paged = %v, want %v", seen, actions)
	}

	// Billing close is recorded with its period; filters by action work.
	e.call("POST", "/v1/billing/2020-01/close", adminSecret, nil, 200)
	var closes api.AuditList
	_ = json.Unmarshal(e.call("GET", "/v1/audit?action=billing.close&actor="+adm.Label(), readSecret, nil, 200), &closes)
	if len(closes.Entries) != 1 || closes.Entries[0].Target != "2020-01" {
		t.Fatalf("billing close entries = %+v", closes.Entries)
	}

	// Bad parameters are 400s naming the field.
	for q, field := range map[string]string{"limit=0": "limit", "cursor=zz": "cursor", "from=yesterday": "from", "nope=1": "nope", "actor=": "actor"} {
		body := e.call("GET", "/v1/audit?"+q, readSecret, nil, 400)
		if !strings.Contains(string(body), `"field": "`+field+`"`) {
			t.Errorf("%s: %s", q, body)
		}
	}
	e.call("GET", "/v1/audit", "", nil, 401)
}
