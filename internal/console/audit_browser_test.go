package console_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/keymeter/keymeter/internal/api"
)

// apiCall calls the REST API directly (not through the console).
func (e *env) apiCall(method, path, token string, body any, want int) map[string]any {
	e.t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != want {
		e.t.Fatalf("%s %s: %d, want %d: %v", method, path, resp.StatusCode, want, out)
	}
	return out
}

// TestConsoleAuditLeaksHistory: changes made in the console and through
// the API appear on the Audit page with the token's label; a leaked key's
// report appears on the Leak reports page with its verdict and what was
// done; the key's page shows its state history.
func TestConsoleAuditLeaksHistory(t *testing.T) {
	e := setup(t)
	bctx := browser(t)
	adm, _ := api.ParseToken("admin:" + api.HashToken(adminSecret))

	// A key made through the API, suspended in the console, resumed and
	// then reported leaked (policy revoke).
	created := e.apiCall("POST", "/v1/keys", adminSecret, map[string]any{"project": "proj_audit", "name": "audited"}, 201)
	secret := created["secret"].(string)
	id := created["key"].(map[string]any)["id"].(string)

	ctx := tab(t, bctx)
	signIn(t, ctx, e.url, adminSecret)
	do(t, ctx, "suspend in the console", chromedp.Navigate(e.url+"/console/keys/"+id), chromedp.WaitVisible(chromedp.ID("suspend")),
		chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`))
	clickAndLoad(t, ctx, "#suspend")
	if st := run(t, ctx, "status", chromedp.Text(chromedp.ID("key-status"))); st != "suspended" {
		t.Fatalf("after suspend: status %q", st)
	}
	e.apiCall("POST", "/v1/keys/"+id+"/resume", adminSecret, nil, 200)
	sum := sha256.Sum256([]byte(secret))
	label := e.apiCall("POST", "/v1/leaks/hash", adminSecret, map[string]any{"token_sha256": hex.EncodeToString(sum[:]), "source": "gist-scan", "url": "https://gist.example/x"}, 200)
	if label["label"] != "true_positive" {
		t.Fatalf("leak label %v", label)
	}
	// A report of a secret that is no key: a false positive, kept only in the audit trail.
	other := sha256.Sum256([]byte("not a key at all"))
	e.apiCall("POST", "/v1/leaks/hash", adminSecret, map[string]any{"token_sha256": hex.EncodeToString(other[:]), "source": "op"}, 200)

	// The Audit page: newest first, with the token's label, never the token.
	do(t, ctx, "audit page", chromedp.Navigate(e.url+"/console/audit"), chromedp.WaitVisible(chromedp.ID("audit-table")))
	rows := run(t, ctx, "audit rows", chromedp.Evaluate[[]string](
		`[...document.querySelectorAll("#audit-table tbody tr")].map(r => [...r.cells].map(c => c.innerText).join("|"))`))
	var actions []string
	for _, r := range rows {
		cells := strings.Split(r, "|")
		if cells[1] != adm.Label() {
			t.Errorf("row %q: token %q, want %q", r, cells[1], adm.Label())
		}
		actions = append(actions, cells[2])
	}
	if got, want := strings.Join(actions, ","), "leak.report,leak.report,key.resume,key.suspend,key.create"; got != want {
		t.Fatalf("audit actions %s, want %s", got, want)
	}
	if txt := pageText(t, ctx); strings.Contains(txt, adminSecret) || strings.Contains(txt, secret) {
		t.Fatal("the audit page shows a token or a key secret")
	}
	shot(t, ctx, "audit")
	// A filter by action, and a bad filter's error next to its field.
	do(t, ctx, "filter", chromedp.Navigate(e.url+"/console/audit?action=key.suspend"), chromedp.WaitVisible(chromedp.ID("audit-table")))
	if n := run(t, ctx, "rows", chromedp.Evaluate[int](`document.querySelectorAll("#audit-table tbody tr").length`)); n != 1 {
		t.Fatalf("filtered by key.suspend: %d rows", n)
	}
	do(t, ctx, "bad filter", chromedp.Navigate(e.url+"/console/audit?from=2026-13-99T00:00"), chromedp.WaitVisible(chromedp.ID("e-from")))

	// The Leak reports page: what arrived, the verdict, what was done.
	do(t, ctx, "leaks page", chromedp.Navigate(e.url+"/console/leaks"), chromedp.WaitVisible(chromedp.ID("leaks-table")))
	row := run(t, ctx, "leak row", chromedp.Text(chromedp.CSS("#leaks-table tbody tr")))
	for _, want := range []string{id, "true positive", "key revoked", "revoked", "gist-scan", "https://gist.example/x"} {
		if !strings.Contains(row, want) {
			t.Fatalf("leak row %q lacks %q", row, want)
		}
	}
	if op := run(t, ctx, "operator reports", chromedp.Text(chromedp.ID("leaks-operator"))); !strings.Contains(op, "false_positive") || !strings.Contains(op, "true_positive") {
		t.Fatalf("operator reports: %q", op)
	}
	shot(t, ctx, "leaks")

	// The key's page: its state history, newest first.
	do(t, ctx, "key page", chromedp.Navigate(e.url+"/console/keys/"+id), chromedp.WaitVisible(chromedp.ID("key-history")))
	changes := run(t, ctx, "history", chromedp.Evaluate[[]string](`[...document.querySelectorAll("#key-history td.change")].map(c => c.innerText)`))
	if got, want := strings.Join(changes, ","), "revoke,resume,suspend,create"; got != want {
		t.Fatalf("key history %s, want %s", got, want)
	}
	shot(t, ctx, "key_history")

	// A read-role session sees the trail too, and has no write controls there.
	rctx := tab(t, bctx)
	signIn(t, rctx, e.url, readSecret)
	do(t, rctx, "audit as read", chromedp.Navigate(e.url+"/console/audit"), chromedp.WaitVisible(chromedp.ID("audit-table")))
	if n := run(t, rctx, "forms", chromedp.Evaluate[int](`document.querySelectorAll("form[method=post]:not([action$='/logout'])").length`)); n != 0 {
		t.Fatalf("read role: %d write forms on the audit page", n)
	}
}
