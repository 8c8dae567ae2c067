package console_test

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/console"
)

// client is a cookie-keeping HTTP client that does not follow redirects
// (ts gives the transport of a TLS test server; nil is plain HTTP).
func client(t *testing.T, ts *httptest.Server) *http.Client {
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Transport: http.DefaultTransport, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if ts != nil {
		c.Transport = ts.Client().Transport
	}
	return c
}

var (
	nonceRE = regexp.MustCompile(`name="nonce" value="([^"]+)"`)
	csrfRE  = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
)

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// login signs in over plain HTTP and returns the sign-in response.
func login(t *testing.T, c *http.Client, base, token, next string) *http.Response {
	t.Helper()
	resp, err := c.Get(base + "/console/login")
	if err != nil {
		t.Fatal(err)
	}
	m := nonceRE.FindStringSubmatch(body(t, resp))
	if m == nil {
		t.Fatal("no nonce on the sign-in page")
	}
	resp, err = c.PostForm(base+"/console/login", url.Values{"nonce": {m[1]}, "token": {token}, "next": {next}})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func sessionCookie(resp *http.Response) *http.Cookie {
	for _, ck := range resp.Cookies() {
		if ck.Name == "keymeter_console" && ck.Value != "" {
			return ck
		}
	}
	return nil
}

func TestSessionCookieAndRedirects(t *testing.T) {
	e := setup(t)
	// Plain HTTP: HttpOnly, SameSite=Strict, path /console, not Secure.
	c := client(t, nil)
	resp := login(t, c, e.url, adminSecret, "//evil.example/x")
	ck := sessionCookie(resp)
	if resp.StatusCode != http.StatusSeeOther || ck == nil {
		t.Fatalf("sign-in: %d, cookie %v", resp.StatusCode, ck)
	}
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/console" || ck.Secure {
		t.Fatalf("cookie over plain HTTP: %+v", ck)
	}
	if loc := resp.Header.Get("Location"); loc != "/console/" {
		t.Fatalf("next=//evil.example/x redirected to %q, want /console/", loc)
	}
	// "/" redirects to the console.
	r2, err := c.Get(e.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusFound || r2.Header.Get("Location") != "/console/" {
		t.Fatalf("GET /: %d %q", r2.StatusCode, r2.Header.Get("Location"))
	}
}

func TestSecureCookieUnderTLS(t *testing.T) {
	// A console in front of the API under TLS: the cookie is Secure.
	adm, _ := api.ParseToken("admin:" + api.HashToken(adminSecret))
	srv, err := api.New(api.Config{Tokens: []api.Token{adm}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(srv)
	defer ts.Close()
	c := client(t, ts)
	resp := login(t, c, ts.URL, adminSecret, "")
	ck := sessionCookie(resp)
	if ck == nil || !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
		t.Fatalf("cookie under TLS: %+v", ck)
	}
}

func TestLoginNeedsItsNonce(t *testing.T) {
	adm, _ := api.ParseToken("admin:" + api.HashToken(adminSecret))
	srv, err := api.New(api.Config{Tokens: []api.Token{adm}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := client(t, ts)
	// A cross-site sign-in form carries no nonce matching the cookie.
	resp, err := c.PostForm(ts.URL+"/console/login", url.Values{"token": {adminSecret}, "nonce": {"guess"}})
	if err != nil {
		t.Fatal(err)
	}
	b := body(t, resp)
	if resp.StatusCode != http.StatusForbidden || sessionCookie(resp) != nil || !strings.Contains(b, "try again") {
		t.Fatalf("login without its nonce: %d, cookie %v", resp.StatusCode, sessionCookie(resp))
	}
}

func TestIdleExpiry(t *testing.T) {
	adm, _ := api.ParseToken("admin:" + api.HashToken(adminSecret))
	srv, err := api.New(api.Config{Tokens: []api.Token{adm}})
	if err != nil {
		t.Fatal(err)
	}
	role := func(tok string) string {
		if tok == adminSecret {
			return "admin"
		}
		return ""
	}
	for _, tc := range []struct {
		idle    time.Duration
		expired bool
	}{{time.Nanosecond, true}, {time.Hour, false}} {
		con, err := console.New(console.Config{API: srv, Role: role, IdleTimeout: tc.idle})
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(con)
		c := client(t, ts)
		resp := login(t, c, ts.URL, adminSecret, "")
		resp.Body.Close()
		if sessionCookie(resp) == nil {
			t.Fatal("no session")
		}
		resp, err = c.Get(ts.URL + "/console/rules")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc := resp.Header.Get("Location")
		if got := resp.StatusCode == http.StatusSeeOther && strings.Contains(loc, "expired=1"); got != tc.expired {
			t.Errorf("idle timeout %v: %d %q, want expired=%v", tc.idle, resp.StatusCode, loc, tc.expired)
		}
		ts.Close()
	}
}

// Every page renders for both roles; write controls only for admin.
func TestPagesRender(t *testing.T) {
	e := setup(t)
	for _, tok := range []string{adminSecret, readSecret} {
		c := client(t, nil)
		login(t, c, e.url, tok, "").Body.Close()
		for _, p := range []string{"/console/", "/console/keys", "/console/logs", "/console/decisions", "/console/rules", "/console/usage"} {
			resp, err := c.Get(e.url + p)
			if err != nil {
				t.Fatal(err)
			}
			b := body(t, resp)
			if resp.StatusCode != 200 || !strings.Contains(b, "<h1>") {
				t.Fatalf("%s as %s: %d", p, tok, resp.StatusCode)
			}
			if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
				t.Fatalf("%s: CSP %q", p, csp)
			}
			if tok == readSecret && strings.Contains(b, `id="new-key"`) {
				t.Fatalf("%s: the read role sees the new-key control", p)
			}
		}
		// The key form is refused to the read role by the API itself.
		resp, _ := c.Get(e.url + "/console/keys/new")
		m := csrfRE.FindStringSubmatch(body(t, resp))
		if m == nil {
			t.Fatal("no csrf token")
		}
		resp, err := c.PostForm(e.url+"/console/keys", url.Values{"csrf": {m[1]}, "project": {"p_render"}})
		if err != nil {
			t.Fatal(err)
		}
		b := body(t, resp)
		want := http.StatusCreated
		if tok == readSecret {
			want = http.StatusForbidden
		}
		if resp.StatusCode != want {
			t.Fatalf("create as %s: %d, want %d: %s", tok, resp.StatusCode, want, b)
		}
		// The usage page lists the project's keys; billing downloads.
		resp, _ = c.Get(e.url + "/console/usage?project=p_render")
		if b := body(t, resp); resp.StatusCode != 200 || !strings.Contains(b, `id="top-keys"`) {
			t.Fatalf("usage of p_render: %d", resp.StatusCode)
		}
		resp, _ = c.Get(e.url + "/console/billing/" + time.Now().UTC().Format("2006-01") + ".csv")
		body(t, resp)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/csv" || !strings.Contains(resp.Header.Get("Content-Disposition"), "attachment") {
			t.Fatalf("billing CSV: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"))
		}
		// Billing data is not to be kept by a browser or proxy cache.
		if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
			t.Fatalf("billing CSV: Cache-Control %q, want no-store", cc)
		}
		resp, _ = c.Get(e.url + "/console/billing/" + time.Now().UTC().Format("2006-01") + ".json")
		body(t, resp)
		if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("billing JSON: %d, Cache-Control %q, want no-store", resp.StatusCode, resp.Header.Get("Cache-Control"))
		}
		resp, _ = c.Get(e.url + "/console/billing/2026-13.json")
		if b := body(t, resp); resp.StatusCode != 400 || !strings.Contains(b, "period") {
			t.Fatalf("billing of a bad period: %d", resp.StatusCode)
		}
	}
}
