package verifier

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/testfix/freeport"
)

// findProxy finds a proxy's binary (sbin directories are often not on a
// user's PATH).
func findProxy(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		if p := filepath.Join(d, name); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in /usr/sbin", name)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// shippedConfig is a file of deploy/proxy with only its ports and paths
// rewritten for the test.
func shippedConfig(t *testing.T, file string, r *strings.Replacer) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "..", "deploy", "proxy", file))
	if err != nil {
		t.Fatal(err)
	}
	conf := r.Replace(string(src))
	path := filepath.Join(t.TempDir(), file)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestNginxForwardAuth runs Debian's nginx with the shipped
// deploy/proxy/nginx.conf in front of a forward-auth verifier with
// --route /public,anonymous=5/10 --route /admin,scope=admin, as the outside
// test of issue 12 did. Spoofed forwarding headers (the critical finding:
// X-Forwarded-Uri: /public/x opened /private/x without a key) change no
// decision, and neither the route nor the client address the usage event
// records. nginx is part of the test setup (make test installs
// nginx-light): its absence fails the test.
func TestNginxForwardAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("needs nginx and NATS")
	}
	nginx, err := findProxy("nginx")
	if err != nil {
		t.Fatalf("%v: install Debian's nginx-light (make deps does)", err)
	}
	ctx := context.Background()
	n := startNATS(t)
	b := n.connect(ctx)
	svc := newService(t, ctx, b, nil)
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// How a CGI/WSGI application reads the identity: both spellings.
		env := cgiEnv(r.Header)
		_, _ = io.WriteString(w, "key="+r.Header.Get(HeaderKeyID)+" project="+r.Header.Get(HeaderProject)+" path="+r.URL.Path+
			" cgi_key="+env["HTTP_X_KEYMETER_KEY_ID"]+" cgi_project="+env["HTTP_X_KEYMETER_PROJECT"]+" outcome="+r.Header.Get(HeaderOutcome)+";")
	})}
	go func() { _ = up.Serve(upLn) }()
	defer up.Close()

	routes, err := ParseRoutes([]string{"/public,anonymous=5/10", "/admin,scope=admin"})
	if err != nil {
		t.Fatal(err)
	}
	authPort := freePort(t)
	// As the shipped config's comment says: --front nginx --trusted-proxy 127.0.0.1/32.
	rv := startVerifier(t, b, RunConfig{Listen: "127.0.0.1:" + authPort, Routes: routes,
		HTTP: HTTPConfig{Front: Fronts["nginx"], TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}})

	plain, err := svc.Create(ctx, keys.CreateParams{Project: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	admin, _ := svc.Create(ctx, keys.CreateParams{Project: "acme", KeyLimits: keys.KeyLimits{Scopes: []string{"admin"}}})
	limited, _ := svc.Create(ctx, keys.CreateParams{Project: "acme", KeyLimits: keys.KeyLimits{RatePerS: 0.01, Burst: 1}})
	revoked, _ := svc.Create(ctx, keys.CreateParams{Project: "acme"})
	if err := svc.Revoke(ctx, revoked.State.GetId(), "test"); err != nil {
		t.Fatal(err)
	}

	port := freePort(t)
	dir := t.TempDir()
	conf := shippedConfig(t, "nginx.conf", strings.NewReplacer(":8080", ":"+port, ":8081", ":"+authPort,
		"127.0.0.1:9000", upLn.Addr().String(), "/tmp/keymeter-nginx", filepath.Join(dir, "nginx")))
	cmd := exec.Command(nginx, "-e", "stderr", "-p", dir, "-c", conf, "-g", "daemon off;")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	base := "http://127.0.0.1:" + port
	for deadline := time.Now().Add(30 * time.Second); ; { // bounds a failing test only
		if c, err := net.Dial("tcp", "127.0.0.1:"+port); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nginx did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The client connects from 127.0.0.2: not a trusted proxy, so that is
	// the address keymeter must record, whatever the client claims.
	client := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}}
	get := func(path, ua string, hdr http.Header) (int, string, string) {
		t.Helper()
		req, err := http.NewRequest("GET", base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Opaque = path // as written: no client-side cleaning of /../
		for k, vs := range hdr {
			req.Header[k] = vs
		}
		req.Header.Set("User-Agent", ua)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body), resp.Header.Get(HeaderOutcome)
	}
	// Keys are usable once the revocation made last is visible (the
	// key-state log is ordered).
	for deadline := time.Now().Add(30 * time.Second); ; { // bounds a failing test only
		if _, _, o := get("/v1/x", "wait", http.Header{"X-Api-Key": {revoked.Secret.Reveal()}}); o == "revoked" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("keys never reached the verifier")
		}
		time.Sleep(10 * time.Millisecond)
	}

	spoof := func(uri string) http.Header {
		return http.Header{
			"X-Forwarded-Uri": {uri}, "X-Original-Uri": {uri}, "X-Forwarded-Prefix": {"/public"},
			"X-Forwarded-Method": {"OPTIONS"}, "X-Original-Method": {"OPTIONS"},
			"X-Forwarded-Host": {"spoofed.example"}, "X-Original-Host": {"spoofed.example"},
			"X-Forwarded-For": {"203.0.113.50"}, "X-Real-Ip": {"203.0.113.51"},
			"Forwarded": {"for=203.0.113.52;host=spoofed.example"}, "X-Keymeter-Auth-Request": {"envoy"},
		}
	}
	key := func(k keys.Created) http.Header { return http.Header{"Authorization": {"Bearer " + k.Secret.Reveal()}} }
	merge := func(a, b http.Header) http.Header {
		out := a.Clone()
		for k, v := range b {
			out[k] = v
		}
		return out
	}
	steps := []struct {
		name    string
		path    string
		hdr     http.Header
		claim   string // the URI the spoofed headers claim
		status  int
		outcome string
		route   string // the route the event records
		body    string
	}{
		{"private without a key", "/private/x", nil, "/public/x", 401, "missing", "/private/x", ""},
		{"admin with a key lacking the scope", "/admin/x", key(plain), "/v1/x", 403, "scope_denied", "/admin/x", ""},
		{"admin with the scope", "/admin/x", key(admin), "/public/x", 200, "", "/admin/x", "key=" + admin.State.GetId()},
		{"valid key, metered on its real route", "/v1/items", key(plain), "/public/free", 200, "", "/v1/items", "key=" + plain.State.GetId()},
		{"anonymous route", "/public/x", nil, "/admin/x", 200, "", "/public/x", "key= project="},
		{"upper case is still /admin", "/ADMIN/x", key(plain), "/public/x", 403, "scope_denied", "/ADMIN/x", ""},
		{"encoded letters are still /admin", "/%61dmin/x", nil, "/public/x", 401, "missing", "/admin/x", ""},
		{"revoked", "/v1/x", http.Header{"X-Api-Key": {revoked.Secret.Reveal()}}, "/public/x", 401, "revoked", "/v1/x", ""},
		{"forged identity header replaced", "/v1/x", merge(key(plain), http.Header{HeaderKeyID: {"key_forged"}}), "/public/x", 200, "", "/v1/x", "key=" + plain.State.GetId()},
		// Finding 2 of the second outside test: underscore spellings, which
		// CGI/WSGI read as the identity, never reach the API.
		{"underscore identity headers dropped", "/v1/x", merge(key(plain), underscoreSpoof), "/public/x", 200, "", "/v1/x",
			"cgi_key=" + plain.State.GetId() + " cgi_project=acme outcome=;"},
		{"underscore identity headers dropped, anonymous", "/public/x", underscoreSpoof, "/admin/x", 200, "", "/public/x", "key= project= path=/public/x cgi_key= cgi_project= outcome=;"},
		{"rate limited keeps 429 through nginx", "/v1/x", key(limited), "", 0, "", "/v1/x", ""}, // first request spends the burst
		{"rate limited", "/v1/x", key(limited), "/public/x", 429, "rate_limited", "/v1/x", ""},
	}
	for i, s := range steps {
		for _, spoofed := range []bool{false, true} {
			if spoofed && s.claim == "" {
				continue
			}
			hdr := s.hdr
			if spoofed {
				hdr = merge(spoof(s.claim), s.hdr)
			}
			st, body, outcome := get(s.path, fmt.Sprintf("step-%d-%v", i, spoofed), hdr)
			if s.status == 0 {
				continue
			}
			if st != s.status || outcome != s.outcome || !strings.Contains(body, s.body) {
				t.Errorf("%s (spoofed %v): %d %q outcome %q; want %d containing %q, outcome %q", s.name, spoofed, st, body, outcome, s.status, s.body, s.outcome)
			}
		}
	}
	// Paths nginx passes to the API as sent ($request_uri) but that it, a
	// framework or the API could resolve to another path: refused 400,
	// never decided on (no usage event), never forwarded. Before the fix,
	// keymeter decided on the cleaned path and the API got the raw one.
	for _, c := range []struct {
		path string
		hdr  http.Header
	}{
		{"/admin/..%2Fpublic", nil},
		{"/admin/..%2fpublic", nil},
		{"/admin/%2e%2e/public", nil},
		{"/admin/%2E%2E/public", nil},
		{"/admin/..%2Fv1", key(plain)},
		{"/public/..;/admin", nil},
		{"/public/%252e%252e/admin", nil},
		{"/public/..%5Cadmin", nil},
		{"/public/../admin/x", nil},
		{"/public/%2e%2e/admin/x", key(plain)},
		{"/public//x", nil},
	} {
		st, body, outcome := get(c.path, "bad-path", c.hdr)
		if st != 400 || strings.Contains(body, "key=") || outcome != "bad_path" {
			t.Errorf("%s through nginx: %d %q outcome %q; want 400 bad_path, not forwarded", c.path, st, body, outcome)
		}
	}
	// An absolute-form request line is routed on its path.
	if st, raw := rawRequest(t, "127.0.0.1:"+port, "GET http://spoofed.example/admin/x HTTP/1.1\r\nHost: spoofed.example\r\nUser-Agent: absolute\r\n\r\n"); st == 200 {
		t.Errorf("absolute-form /admin/x without a key: %d %s", st, raw)
	}

	if err := rv.stop(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, ev := range readAllEvents(t, ctx, b) {
		var i int
		var spoofed bool
		if _, err := fmt.Sscanf(strings.ReplaceAll(ev.UserAgent, "-", " "), "step %d %t", &i, &spoofed); err != nil || i >= len(steps) {
			continue
		}
		s := steps[i]
		seen[ev.UserAgent] = true
		if ev.Route != s.route || ev.ClientIP != "127.0.0.2" || ev.Method != "GET" || ev.Host != "127.0.0.1" {
			t.Errorf("%s (spoofed %v): event route %q client %q method %q host %q; want %q, 127.0.0.2, GET, 127.0.0.1",
				s.name, spoofed, ev.Route, ev.ClientIP, ev.Method, ev.Host, s.route)
		}
	}
	for i, s := range steps {
		for _, spoofed := range []bool{false, true} {
			if ua := fmt.Sprintf("step-%d-%v", i, spoofed); (s.claim != "" || !spoofed) && !seen[ua] {
				t.Errorf("no usage event for %s (spoofed %v)", s.name, spoofed)
			}
		}
	}
}

// underscoreSpoof are identity headers spelled with underscores (and an
// outcome), as the second outside test sent them.
var underscoreSpoof = http.Header{"X_Keymeter_Key_Id": {"key_victim"}, "X_Keymeter_Project": {"proj_victim"}, "X-Keymeter-Outcome": {"valid"}}

func rawRequest(t *testing.T, addr, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// readsHeaders are the headers keymeter may read for the original request
// or the client address, under any front or setting: every shipped proxy
// example must set or strip each of them before calling keymeter.
var readsHeaders = []string{
	"x-forwarded-for", "x-forwarded-method", "x-forwarded-uri", "x-forwarded-host",
	"x-original-method", "x-original-uri", "x-original-host", "x-real-ip", "forwarded",
}

// TestEnvoyConfigStripsHeaders checks deploy/proxy/envoy.yaml (no Envoy
// package to run it): the check request carries only allow-listed client
// headers, none of them one keymeter reads but X-Forwarded-For, which the
// early header mutation removes before Envoy appends the peer's address.
func TestEnvoyConfigStripsHeaders(t *testing.T) {
	var doc any
	src, err := os.ReadFile("../../deploy/proxy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(src, &doc); err != nil {
		t.Fatal(err)
	}
	hcm := findKey(doc, "early_header_mutation_extensions")
	if hcm == nil {
		t.Fatal("envoy.yaml: no early_header_mutation_extensions")
	}
	removed := map[string]bool{}
	for _, m := range findAll(hcm, "remove") {
		removed[strings.ToLower(fmt.Sprint(m))] = true
	}
	for _, h := range readsHeaders {
		if !removed[h] {
			t.Errorf("envoy.yaml: the client's %s is not removed early", h)
		}
	}
	if a := fmt.Sprint(findKey(doc, "headers_with_underscores_action")); a != "REJECT_REQUEST" && a != "DROP_HEADER" {
		t.Errorf("envoy.yaml: headers_with_underscores_action is %s, want REJECT_REQUEST or DROP_HEADER (X_Keymeter_Key_Id would reach the upstream)", a)
	}
	for _, h := range []string{"x-keymeter-key-id", "x-keymeter-project", "x-keymeter-outcome", "x-keymeter-status"} {
		if !removed[h] {
			t.Errorf("envoy.yaml: the client's %s is not removed early", h)
		}
	}
	if fmt.Sprint(findKey(doc, "use_remote_address")) != "true" {
		t.Error("envoy.yaml: use_remote_address must be true (Envoy appends the peer's address)")
	}
	if findKey(doc, "path_prefix") != nil {
		t.Error("envoy.yaml: path_prefix would change the path keymeter decides on")
	}
	allowed := findKey(findKey(doc, "authorization_request"), "allowed_headers")
	if allowed == nil {
		t.Fatal("envoy.yaml: no allowed_headers: every client header would reach keymeter")
	}
	for _, v := range findAll(allowed, "exact") {
		name := strings.ToLower(fmt.Sprint(v))
		if name != "x-forwarded-for" && contains(readsHeaders, name) {
			t.Errorf("envoy.yaml: allowed_headers passes the client's %s", name)
		}
	}
	for _, v := range append(findAll(allowed, "prefix"), findAll(allowed, "safe_regex")...) {
		t.Errorf("envoy.yaml: allowed_headers must list exact names, found %v", v)
	}
}

// TestTraefikConfigStripsHeaders checks deploy/proxy/traefik*.yml (no
// Traefik package): forwardAuth copies only allow-listed client headers
// and sets X-Forwarded-* itself; the entry point trusts no client
// forwarding headers.
func TestTraefikConfigStripsHeaders(t *testing.T) {
	var dyn, static any
	for file, dst := range map[string]*any{"traefik-dynamic.yml": &dyn, "traefik.yml": &static} {
		src, err := os.ReadFile("../../deploy/proxy/" + file)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(src, dst); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	fa := findKey(dyn, "forwardAuth")
	if fa == nil {
		t.Fatal("traefik-dynamic.yml: no forwardAuth")
	}
	if fmt.Sprint(findKey(fa, "trustForwardHeader")) != "false" {
		t.Error("traefik-dynamic.yml: trustForwardHeader must be false")
	}
	arh, _ := findKey(fa, "authRequestHeaders").([]any)
	if len(arh) == 0 {
		t.Error("traefik-dynamic.yml: authRequestHeaders must list the client headers keymeter gets (else all pass)")
	}
	for _, h := range arh {
		if contains(readsHeaders, strings.ToLower(fmt.Sprint(h))) {
			t.Errorf("traefik-dynamic.yml: authRequestHeaders passes the client's %v", h)
		}
	}
	// The regex strips every client header reading as keymeter's before
	// the answer's are copied (Traefik's header names are Go's canonical
	// form: X_keymeter_key_id).
	re, err := regexp.Compile(fmt.Sprint(findKey(fa, "authResponseHeadersRegex")))
	if err != nil || findKey(fa, "authResponseHeadersRegex") == nil {
		t.Errorf("traefik-dynamic.yml: authResponseHeadersRegex missing or invalid: %v", err)
	} else {
		for _, h := range []string{"X-Keymeter-Key-Id", "X_keymeter_key_id", "X-Keymeter_project", "X_keymeter-project", "X-Keymeter-Outcome", "X.Keymeter.Key.Id"} {
			if !re.MatchString(http.CanonicalHeaderKey(h)) {
				t.Errorf("traefik-dynamic.yml: authResponseHeadersRegex does not strip %s", http.CanonicalHeaderKey(h))
			}
		}
		for _, h := range []string{"Authorization", "X-Api-Key", "X-Keymeterish", "Y-Keymeter-Key-Id"} {
			if re.MatchString(h) {
				t.Errorf("traefik-dynamic.yml: authResponseHeadersRegex strips %s", h)
			}
		}
	}
	if fh := findKey(static, "forwardedHeaders"); fh != nil && (findKey(fh, "insecure") == true || findKey(fh, "trustedIPs") != nil) {
		t.Errorf("traefik.yml: the entry point must not trust client forwarding headers: %v", fh)
	}
}

// TestCaddyConfigStripsHeaders checks deploy/proxy/Caddyfile (Caddy is not
// run here): forward_auth sets X-Forwarded-Method/-Uri itself, the
// Caddyfile sets X-Forwarded-Host and X-Forwarded-For and removes every
// other header keymeter reads.
func TestCaddyConfigStripsHeaders(t *testing.T) {
	src, err := os.ReadFile("../../deploy/proxy/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	block := string(src)
	loc := regexp.MustCompile(`(?m)^\s*forward_auth\s`).FindStringIndex(block)
	if loc == nil {
		t.Fatal("Caddyfile: no forward_auth")
	}
	// Before forward_auth, every client header reading as keymeter's goes
	// (Caddy's wildcard deletes ignore case).
	for _, d := range []string{"request_header -X-Keymeter*", "request_header -X_Keymeter*"} {
		if i := strings.Index(block, d); i < 0 || i > loc[0] {
			t.Errorf("Caddyfile: %q missing before forward_auth", d)
		}
	}
	var lines []string
	for _, line := range strings.Split(block[loc[0]:], "\n")[1:] {
		if strings.TrimSpace(line) == "}" {
			break
		}
		lines = append(lines, line)
	}
	block = strings.Join(lines, "\n")
	handled := map[string]bool{"x-forwarded-method": true, "x-forwarded-uri": true} // forward_auth sets them
	for _, line := range strings.Split(block, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "header_up" {
			name := strings.ToLower(strings.TrimPrefix(f[1], "-"))
			if strings.HasPrefix(f[1], "-") || len(f) >= 3 {
				handled[name] = true
			}
		}
	}
	for _, h := range readsHeaders {
		if !handled[h] {
			t.Errorf("Caddyfile: forward_auth neither sets nor removes %s", h)
		}
	}
	if !strings.Contains(block, "header_up X-Forwarded-For {remote_host}") {
		t.Error("Caddyfile: X-Forwarded-For must be set to {remote_host}")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// findKey returns the first value under key anywhere in a decoded YAML tree.
func findKey(v any, key string) any {
	switch t := v.(type) {
	case map[string]any:
		if x, ok := t[key]; ok {
			return x
		}
		for _, x := range t {
			if r := findKey(x, key); r != nil {
				return r
			}
		}
	case []any:
		for _, x := range t {
			if r := findKey(x, key); r != nil {
				return r
			}
		}
	}
	return nil
}

// findAll returns every value under key in a decoded YAML tree.
func findAll(v any, key string) []any {
	var out []any
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if k == key {
				out = append(out, x)
			} else {
				out = append(out, findAll(x, key)...)
			}
		}
	case []any:
		for _, x := range t {
			out = append(out, findAll(x, key)...)
		}
	}
	return out
}

// freePort is a port for a process started later (nginx, a private Kafka
// broker), from below the kernel's ephemeral range: no other test's
// listener can take it before the process binds it (see freeport).
func freePort(t testing.TB) string {
	t.Helper()
	p, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(p)
}
