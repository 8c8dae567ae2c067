package verifier

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/keymeter/keymeter/internal/event"
)

// cgiEnv is the environment a CGI, WSGI (PEP 3333) or Rack server builds
// from the request headers: HTTP_ + the name upper-cased with '-' read as
// '_', the values of names that collide joined with ",".
func cgiEnv(h http.Header) map[string]string {
	env := map[string]string{}
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		name := "HTTP_" + strings.ToUpper(strings.ReplaceAll(k, "-", "_"))
		for _, v := range h[k] {
			if env[name] != "" {
				env[name] += ","
			}
			env[name] += v
		}
	}
	return env
}

// cgiUpstream is a real HTTP upstream that answers with the identity as a
// CGI/WSGI application reads it (HTTP_X_KEYMETER_KEY_ID and _PROJECT) and
// whether any header spelled like keymeter's arrived, and with the raw
// query it got.
func cgiUpstream(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		env := cgiEnv(r.Header)
		var names []string
		for k := range r.Header {
			if strings.HasPrefix(strings.ToLower(strings.ReplaceAll(k, "_", "-")), "x-keymeter-") {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		fmt.Fprintf(w, "id=%q project=%q names=%v query=%q uri=%q\n", env["HTTP_X_KEYMETER_KEY_ID"], env["HTTP_X_KEYMETER_PROJECT"], names, r.URL.RawQuery, r.RequestURI)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// rawGet sends a request with header names exactly as written (Go's client
// would send them so too; raw bytes make it plain what goes on the wire).
func rawGet(t *testing.T, addr, target string, headers ...string) (int, string) {
	t.Helper()
	req := "GET " + target + " HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n"
	for _, h := range headers {
		req += h + "\r\n"
	}
	return rawRequest(t, addr, req+"\r\n")
}

// TestProxyDropsUnderscoreIdentityHeaders is the outside test's finding 2:
// X_Keymeter_Key_Id passed the proxy, and a CGI/WSGI upstream read it as
// HTTP_X_KEYMETER_KEY_ID, alone on an anonymous route and joined to the
// real id with a key. Every client header reading as X-Keymeter-* (either
// spelling, any case) is dropped; the upstream sees only keymeter's.
func TestProxyDropsUnderscoreIdentityHeaders(t *testing.T) {
	v, tbl := newTestVerifier(t, Route{Prefix: "/public", Anonymous: true, AnonRatePerS: 1000, AnonBurst: 1000})
	k := testKeyState(t, tbl, 0, 0)
	up := cgiUpstream(t)
	u, _ := url.Parse(up.URL)
	srv := NewServer(v, nil, nil, HTTPConfig{})
	front := httptest.NewServer(srv.Proxy(u))
	defer front.Close()
	addr := strings.TrimPrefix(front.URL, "http://")

	spoof := []string{
		"X_Keymeter_Key_Id: key_victim", "X_Keymeter_Project: proj_victim",
		"x_keymeter_key_id: key_victim2", "X-KEYMETER_PROJECT: proj_victim2",
		"X-Keymeter-Key-Id: key_forged", "x-keymeter-outcome: valid", "X_Keymeter_Status: 200",
		"Connection: X-Keymeter-Key-Id",
	}
	for _, c := range []struct {
		name, path string
		hdr        []string
		id, proj   string
	}{
		{"anonymous", "/public/a", nil, "", ""},
		{"with a key", "/v1/a", []string{"Authorization: Bearer " + k.secret}, k.id, "proj_test"},
	} {
		st, body := rawGet(t, addr, c.path, append(append([]string{}, spoof...), c.hdr...)...)
		want := fmt.Sprintf("id=%q project=%q", c.id, c.proj)
		if st != 200 || !strings.HasPrefix(body, want) {
			t.Errorf("%s: %d %s; want 200 and %s", c.name, st, body, want)
		}
		wantNames := "names=[]"
		if c.id != "" {
			wantNames = "names=[X-Keymeter-Key-Id X-Keymeter-Project]"
		}
		if !strings.Contains(body, wantNames) {
			t.Errorf("%s: upstream got %s; want only keymeter's headers (%s)", c.name, body, wantNames)
		}
	}

	// The same through Python's wsgiref, as the outside test ran it.
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Log("python3 not found: the wsgiref upstream is not run")
		return
	}
	script := filepath.Join(t.TempDir(), "wsgiup.py")
	if err := os.WriteFile(script, []byte(wsgiUpstream), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, py, script)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n') // "PORT\n" once listening
	if err != nil {
		t.Fatalf("wsgiref upstream did not start: %v", err)
	}
	pu, _ := url.Parse("http://127.0.0.1:" + strings.TrimSpace(line))
	wfront := httptest.NewServer(srv.Proxy(pu))
	defer wfront.Close()
	waddr := strings.TrimPrefix(wfront.URL, "http://")
	for _, c := range []struct {
		name, path string
		hdr        []string
		want       string
	}{
		{"anonymous", "/public/a", nil, "HTTP_X_KEYMETER_KEY_ID=None HTTP_X_KEYMETER_PROJECT=None"},
		{"with a key", "/v1/a", []string{"Authorization: Bearer " + k.secret}, fmt.Sprintf("HTTP_X_KEYMETER_KEY_ID='%s' HTTP_X_KEYMETER_PROJECT='proj_test'", k.id)},
	} {
		st, body := rawGet(t, waddr, c.path, append(append([]string{}, spoof[:4]...), c.hdr...)...)
		if st != 200 || strings.TrimSpace(body) != c.want {
			t.Errorf("wsgiref, %s: %d %q; want %q", c.name, st, body, c.want)
		}
	}
}

// wsgiUpstream is the outside test's wsgiup.py: a wsgiref server printing
// the identity variables; it prints its port, then serves until killed.
const wsgiUpstream = `import sys
from wsgiref.simple_server import make_server, WSGIRequestHandler
class Q(WSGIRequestHandler):
    def log_message(self, *a): pass
def app(env, start):
    start("200 OK", [("Content-Type", "text/plain")])
    return [("HTTP_X_KEYMETER_KEY_ID=%r HTTP_X_KEYMETER_PROJECT=%r\n" % (env.get("HTTP_X_KEYMETER_KEY_ID"), env.get("HTTP_X_KEYMETER_PROJECT"))).encode()]
srv = make_server("127.0.0.1", 0, app, handler_class=Q)
print(srv.server_port, flush=True)
srv.serve_forever()
`

// TestForwardAuthRefusesUnderscoreIdentityHeaders: in forward auth the
// proxy forwards the client's headers itself and overwrites only the exact
// names keymeter answers with, so a subrequest carrying an underscore
// spelling of one is refused (400; 403 + X-Keymeter-Status for nginx),
// never decided on.
func TestForwardAuthRefusesUnderscoreIdentityHeaders(t *testing.T) {
	v, tbl := newTestVerifier(t)
	k := testKeyState(t, tbl, 0, 0)
	for _, front := range []string{"traefik", "nginx", "envoy"} {
		var emitted int
		srv := NewServer(v, nil, nil, HTTPConfig{Front: Fronts[front]})
		srv.emitHook = func(*event.Event) { emitted++ }
		h := srv.ForwardAuth("")
		for _, c := range []struct {
			hdr    string
			status int
		}{
			{"X_Keymeter_Key_Id", 400}, {"x-keymeter_project", 400}, {"X.Keymeter.Key.Id", 400}, {"X-Keymeter-Key-Id", 200}, {"X_Other", 200},
		} {
			req := httptest.NewRequest("GET", "/v1/x", nil)
			req.RemoteAddr = "127.0.0.1:5555"
			for _, n := range []string{"X-Forwarded-Method", "X-Original-Method"} {
				req.Header.Set(n, "GET")
			}
			for _, n := range []string{"X-Forwarded-Uri", "X-Original-Uri"} {
				req.Header.Set(n, "/v1/x")
			}
			for _, n := range []string{"X-Forwarded-Host", "X-Original-Host"} {
				req.Header.Set(n, "api")
			}
			req.Header.Set("Authorization", "Bearer "+k.secret)
			req.Header[c.hdr] = []string{"key_victim"}
			w := httptest.NewRecorder()
			emitted = 0
			h.ServeHTTP(w, req)
			want := c.status
			if want == 400 && front == "nginx" {
				want = 403
			}
			if w.Code != want || (c.status == 400) != (w.Header().Get(HeaderOutcome) == "bad_header") {
				t.Errorf("%s, %s: %d outcome %q; want %d", front, c.hdr, w.Code, w.Header().Get(HeaderOutcome), want)
			}
			if c.status == 400 && (emitted != 0 || w.Header().Get(HeaderKeyID) != "") {
				t.Errorf("%s, %s: decided on (events %d, key id %q)", front, c.hdr, emitted, w.Header().Get(HeaderKeyID))
			}
			if front == "nginx" && c.status == 400 && w.Header().Get(HeaderStatus) != "400" {
				t.Errorf("nginx, %s: X-Keymeter-Status %q, want 400", c.hdr, w.Header().Get(HeaderStatus))
			}
		}
	}
}

// TestIsKeymeterHeader pins the rule: X-Keymeter- ignoring case, '_' as '-'.
func TestIsKeymeterHeader(t *testing.T) {
	for name, want := range map[string]bool{
		"X-Keymeter-Key-Id": true, "X_Keymeter_Key_Id": true, "x_keymeter-project": true, "X-KEYMETER_OUTCOME": true,
		"X.Keymeter.Key.Id": true, "X-Keymeter~Key": true, "X-Keymeter-": true, "X-Keymeter": false, "X-Keymeter1": false, "X-Keymeterx": false, "X-Key-Meter-Id": false, "Keymeter-Key-Id": false, "": false,
	} {
		if got := isKeymeterHeader(name); got != want {
			t.Errorf("isKeymeterHeader(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestQueryParamAlwaysStripped is the outside test's finding 7: with
// --query-param api_key, a request authenticated by a header still had
// api_key=SECRET in the URL the upstream (and its logs) got. The parameter
// goes whichever credential was used, and in any spelling the upstream
// decodes to the same name.
func TestQueryParamAlwaysStripped(t *testing.T) {
	v, tbl := newTestVerifier(t, Route{Prefix: "/public", Anonymous: true, AnonRatePerS: 1000, AnonBurst: 1000})
	a := testKeyState(t, tbl, 0, 0)
	b := testKeyState(t, tbl, 0, 0)
	up := cgiUpstream(t)
	u, _ := url.Parse(up.URL)
	front := httptest.NewServer(NewServer(v, nil, nil, HTTPConfig{QueryParam: "api_key"}).Proxy(u))
	defer front.Close()
	addr := strings.TrimPrefix(front.URL, "http://")
	for _, c := range []struct {
		name, target string
		hdr          []string
		query        string
	}{
		{"header key, query secret", "/y?api_key=" + b.secret, []string{"Authorization: Bearer " + a.secret}, ""},
		{"X-API-Key, query secret among others", "/y?x=1&api_key=" + b.secret + "&y=2", []string{"X-API-Key: " + a.secret}, "x=1&y=2"},
		{"query key", "/y?api_key=" + a.secret + "&z=3", nil, "z=3"},
		{"encoded name", "/y?api%5Fkey=" + b.secret + "&z=3", []string{"Authorization: Bearer " + a.secret}, "z=3"},
		{"anonymous route", "/public/y?api_key=" + b.secret, nil, ""},
		{"no parameter", "/y?z=3&api_keyx=1", []string{"Authorization: Bearer " + a.secret}, "z=3&api_keyx=1"},
	} {
		st, body := rawGet(t, addr, c.target, c.hdr...)
		if st != 200 || !strings.Contains(body, fmt.Sprintf("query=%q", c.query)) || strings.Contains(body, b.secret) {
			t.Errorf("%s: %d %s; want 200, upstream query %q, no secret", c.name, st, body, c.query)
		}
	}
	// Without --query-param nothing is touched.
	front2 := httptest.NewServer(NewServer(v, nil, nil, HTTPConfig{}).Proxy(u))
	defer front2.Close()
	if st, body := rawGet(t, strings.TrimPrefix(front2.URL, "http://"), "/y?api_key=x", "X-API-Key: "+a.secret); st != 200 || !strings.Contains(body, `query="api_key=x"`) {
		t.Errorf("no --query-param: %d %s", st, body)
	}
}
