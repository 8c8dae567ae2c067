package api_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/leaks"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
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

// TestAuditSignedLeakReport: a secret scanner's signed report is recorded
// with the reporter's key identifier and each token's verdict; a refused
// (forged) report is not.
func TestAuditSignedLeakReport(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 1})
	table, svc := natstest.Keys(t, b)
	db, err := chdb.Open(chdb.Config{DataDir: chdbDir(t), Database: fmt.Sprintf("api_leak_%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close(context.Background()) })
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	leaked, err := svc.Create(ctx, keys.CreateParams{Project: "proj_leak"})
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	lh, err := leaks.New(leaks.Config{Table: table, Keys: svc, Store: db, PublicKeys: map[string]*ecdsa.PublicKey{"scanner-1": &priv.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	rd, _ := api.ParseToken("read:" + api.HashToken(readSecret))
	s, err := api.New(api.Config{Tokens: []api.Token{rd}, Keys: svc, KeyTable: table, Decision: db, Leaks: lh, Audit: db})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal([]leaks.Report{
		{Token: leaked.Secret.Reveal(), Type: "keymeter_api_key", URL: "https://example.com/gist", Source: "gist"},
		{Token: "km_live_not_a_real_key", Type: "keymeter_api_key", Source: "content"},
	})
	post := func(sig []byte) int {
		req := httptest.NewRequest("POST", "/v1/leaks", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Github-Public-Key-Identifier", "scanner-1")
		req.Header.Set("Github-Public-Key-Signature", base64.StdEncoding.EncodeToString(sig))
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		return rec.Code
	}
	digest := sha256.Sum256(body)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged, _ := ecdsa.SignASN1(rand.Reader, other, digest[:])
	if code := post(forged); code != http.StatusUnauthorized {
		t.Fatalf("forged report: %d", code)
	}
	good, _ := ecdsa.SignASN1(rand.Reader, priv, digest[:])
	if code := post(good); code != http.StatusOK {
		t.Fatalf("signed report: %d", code)
	}
	es, err := db.Audit(ctx, store.AuditQuery{Action: "leak.report"})
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Actor != "reporter:scanner-1" || es[0].Role != "reporter" ||
		!strings.Contains(es[0].Detail, "true_positive") || !strings.Contains(es[0].Detail, "false_positive") {
		t.Fatalf("audit of the signed report = %+v", es)
	}
	if strings.Contains(es[0].Detail, leaked.Secret.Reveal()) || strings.Contains(es[0].Detail, "km_live_not_a_real_key") {
		t.Fatalf("the audit trail holds a reported secret: %s", es[0].Detail)
	}
}
