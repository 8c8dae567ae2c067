package console_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
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
