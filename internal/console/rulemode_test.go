package console_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

var switchRE = regexp.MustCompile(`action="/console/rules/([^"]+)/mode"[^>]*>\s*<input type="hidden" name="csrf" value="([^"]+)"><input type="hidden" name="mode" value="dry_run">`)

// TestRuleModeSwitch: an admin session switches a rule to dry-run from the
// rules page (form with CSRF token) and sees the override; a read session
// has no switch and the API refuses its post; a post without the CSRF
// token changes nothing.
func TestRuleModeSwitch(t *testing.T) {
	e := setup(t)
	rd := client(t, nil)
	login(t, rd, e.url, readSecret, "").Body.Close()
	resp, err := rd.Get(e.url + "/console/rules")
	if err != nil {
		t.Fatal(err)
	}
	b := body(t, resp)
	if resp.StatusCode != 200 || strings.Contains(b, `/mode"`) || strings.Contains(b, "Switch") {
		t.Fatalf("read session: %d, switch shown: %v", resp.StatusCode, strings.Contains(b, `/mode"`))
	}

	adm := client(t, nil)
	login(t, adm, e.url, adminSecret, "").Body.Close()
	resp, _ = adm.Get(e.url + "/console/rules")
	m := switchRE.FindStringSubmatch(body(t, resp))
	if m == nil {
		t.Fatal("admin session: no dry-run switch on the rules page")
	}
	id, csrf := m[1], m[2]
	// Without the CSRF token: refused, nothing changed.
	resp, _ = adm.PostForm(e.url+"/console/rules/"+id+"/mode", url.Values{"mode": {"dry_run"}})
	body(t, resp)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("post without csrf: %d", resp.StatusCode)
	}
	// A read session's post (with its own token) is refused by the API.
	resp, _ = rd.Get(e.url + "/console/keys")
	rm := csrfRE.FindStringSubmatch(body(t, resp))
	if rm == nil {
		t.Fatal("no csrf token for the read session")
	}
	resp, _ = rd.PostForm(e.url+"/console/rules/"+id+"/mode", url.Values{"csrf": {rm[1]}, "mode": {"dry_run"}})
	body(t, resp)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("read post: %d", resp.StatusCode)
	}
	resp, err = adm.PostForm(e.url+"/console/rules/"+id+"/mode", url.Values{"csrf": {csrf}, "mode": {"dry_run"}})
	if err != nil {
		t.Fatal(err)
	}
	body(t, resp)
	if resp.StatusCode/100 != 3 || !strings.Contains(resp.Header.Get("Location"), "switched=") {
		t.Fatalf("admin post: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// The detector's engine gets the override off the bus; the page shows
	// it with a switch back to enforce. Poll: the deadline bounds a failure.
	back := regexp.MustCompile(`action="/console/rules/` + regexp.QuoteMeta(id) + `/mode"[^>]*>\s*<input type="hidden" name="csrf" value="[^"]+"><input type="hidden" name="mode" value="enforce">`)
	loc := resp.Header.Get("Location")
	for end := time.Now().Add(20 * time.Second); ; {
		resp, _ = adm.Get(e.url + loc)
		b = body(t, resp)
		if strings.Contains(b, "switched to dry_run") && strings.Contains(b, "set by an operator") && back.MatchString(b) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("override not shown on the rules page:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRuleModeClearAndRestore: an admin clears a switch from the rules
// page (back to the file's mode); a detector started later restores each
// rule's latest switch from the audit trail, which outlives the decisions
// log's retention.
func TestRuleModeClearAndRestore(t *testing.T) {
	e := setup(t)
	const id = "anonymous-burst"
	e.apiCall("PUT", "/v1/rules/"+id+"/mode", adminSecret, map[string]any{"mode": "dry_run"}, 202)
	restored := func() string {
		t.Helper()
		set, err := detect.LoadPaths(detect.CompileOptions{}, "../../rules")
		if err != nil {
			t.Fatal(err)
		}
		eng, err := detect.New(detect.Config{Sink: detect.SinkFunc(func(*keymeterv1.Decision) {})}, set)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := detector.RestoreRuleModes(context.Background(), e.db, eng, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		for _, r := range eng.RuleStatuses().([]detect.RuleStats) {
			if r.ID == id {
				return r.Override
			}
		}
		t.Fatalf("no rule %s", id)
		return ""
	}
	if o := restored(); o != "dry_run" {
		t.Fatalf("a fresh engine restored override %q from the audit trail, want dry_run", o)
	}
	adm := client(t, nil)
	login(t, adm, e.url, adminSecret, "").Body.Close()
	clear := regexp.MustCompile(`action="/console/rules/` + id + `/mode"[^>]*>\s*<input type="hidden" name="csrf" value="([^"]+)"><input type="hidden" name="mode" value="file">`)
	var csrf string
	for end := time.Now().Add(20 * time.Second); ; {
		resp, _ := adm.Get(e.url + "/console/rules")
		if m := clear.FindStringSubmatch(body(t, resp)); m != nil {
			csrf = m[1]
			break
		}
		if time.Now().After(end) {
			t.Fatal("no clear button for the switched rule")
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := adm.PostForm(e.url+"/console/rules/"+id+"/mode", url.Values{"csrf": {csrf}, "mode": {"file"}})
	if err != nil {
		t.Fatal(err)
	}
	body(t, resp)
	if resp.StatusCode/100 != 3 {
		t.Fatalf("clear: %d", resp.StatusCode)
	}
	for end := time.Now().Add(20 * time.Second); ; {
		resp, _ := adm.Get(e.url + resp.Header.Get("Location"))
		b := body(t, resp)
		if strings.Contains(b, "back to its file&#39;s mode") && !strings.Contains(b, "set by an operator") {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the switch was not cleared on the rules page:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if o := restored(); o != "" {
		t.Fatalf("after clearing, a fresh engine restored override %q", o)
	}
	// A bad mode names the accepted values, file among them.
	out := e.apiCall("PUT", "/v1/rules/"+id+"/mode", adminSecret, map[string]any{"mode": "off"}, 400)
	if msg := fmt.Sprint(out["error"]); !strings.Contains(msg, "file") {
		t.Fatalf("bad mode error: %s", msg)
	}
}
