package verifier

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/keymeter/keymeter/internal/event"
)

// spoofable are the headers a client may send through a front: every
// header any front or the client-address algorithm reads, and the old
// forward-auth switch.
var spoofable = []string{
	"X-Forwarded-Uri", "X-Original-Uri", "X-Forwarded-Method", "X-Original-Method",
	"X-Forwarded-Host", "X-Original-Host", "X-Real-Ip", "Forwarded", "X-Keymeter-Auth-Request",
}

type fwdResult struct {
	status                      int
	outcome, keyID              string
	route, method, host, client string
	events                      int
}

// fwdHarness is a forward-auth endpoint per front over one verifier with
// an anonymous /public, a scoped /admin and a key without the admin scope.
type fwdHarness struct {
	srv    map[string]*Server
	secret string
	last   *event.Event
	n      int
}

func newFwdHarness(t testing.TB) *fwdHarness {
	v, tbl := newTestVerifier(t, Route{Prefix: "/public", Anonymous: true, AnonRatePerS: 1e9, AnonBurst: 1 << 30}, Route{Prefix: "/admin", Scope: "admin"})
	h := &fwdHarness{srv: map[string]*Server{}, secret: testKey(t, tbl, newState(0, 0))}
	for name, f := range Fronts {
		s := NewServer(v, nil, nil, HTTPConfig{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Front: f})
		s.emitHook = func(e *event.Event) { c := *e; h.last = &c; h.n++ }
		h.srv[name] = s
	}
	return h
}

// request is what the front sends for "method uri" from client 198.51.100.7
// (the front writes X-Forwarded-For itself), plus extra headers.
func (h *fwdHarness) do(front, method, uri string, key bool, extra http.Header) fwdResult {
	f := Fronts[front]
	target := "/"
	if f.URIHeader == "" {
		target = uri
	}
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return fwdResult{status: 400} // net/http answers it before any handler
	}
	req.URL, req.RequestURI = u, target
	req.Method = http.MethodGet
	if f.URIHeader == "" {
		req.Method = method
	}
	req.RemoteAddr = "127.0.0.1:5555"
	req.Host = "verifier.internal"
	for k, vs := range extra {
		req.Header[http.CanonicalHeaderKey(k)] = vs
	}
	// The front's own headers replace whatever the client sent.
	if f.URIHeader != "" {
		req.Header.Set(f.MethodHeader, method)
		req.Header.Set(f.URIHeader, uri)
		req.Header.Set(f.HostHeader, "api.example")
	} else {
		req.Host = "api.example"
	}
	req.Header.Set("X-Forwarded-For", "198.51.100.7")
	if key {
		req.Header.Set("Authorization", "Bearer "+h.secret)
	}
	w := httptest.NewRecorder()
	n := h.n
	h.last = nil
	h.srv[front].ForwardAuth("").ServeHTTP(w, req)
	r := fwdResult{status: w.Code, outcome: w.Header().Get(HeaderOutcome), keyID: w.Header().Get(HeaderKeyID), events: h.n - n}
	if w.Header().Get(HeaderStatus) == "400" {
		r.status = 400 // nginx: a 403 that its config turns into 400
	}
	if h.last != nil {
		r.route, r.method, r.host, r.client = h.last.Route, h.last.Method, h.last.Host, h.last.ClientIP
	}
	return r
}

// TestForwardAuthSpoofedHeaders is the critical finding of issue 12: a
// client's X-Forwarded-Uri (and friends) decided instead of the front's
// X-Original-URI. With every front, no header a client can send changes
// the decision or what the usage event records.
func TestForwardAuthSpoofedHeaders(t *testing.T) {
	h := newFwdHarness(t)
	spoof := http.Header{}
	for _, k := range spoofable {
		spoof.Set(k, "")
	}
	spoof.Set("X-Forwarded-Uri", "/public/x")
	spoof.Set("X-Original-Uri", "/public/x")
	spoof.Set("X-Forwarded-Method", "OPTIONS")
	spoof.Set("X-Original-Method", "OPTIONS")
	spoof.Set("X-Forwarded-Host", "spoofed.example")
	spoof.Set("X-Original-Host", "spoofed.example")
	spoof.Set("X-Real-Ip", "192.0.2.66")
	spoof.Set("Forwarded", "for=192.0.2.66;host=spoofed.example")
	spoof.Set("X-Keymeter-Auth-Request", "nginx")
	for front, f := range Fronts {
		for _, c := range []struct {
			uri    string
			key    bool
			status int
		}{
			{"/private/x", false, 401},  // claimed /public: must stay refused
			{"/admin/users", true, 403}, // a key without the admin scope
			{"/v1/items?page=2", true, 200},
			{"/public/x", false, 200},
		} {
			want := h.do(front, "GET", c.uri, c.key, nil)
			if want.status != c.status {
				t.Fatalf("%s %s: status %d, want %d", front, c.uri, want.status, c.status)
			}
			s := spoof.Clone()
			// The front's own headers are not spoofable through it.
			for _, own := range []string{f.MethodHeader, f.URIHeader, f.HostHeader} {
				delete(s, http.CanonicalHeaderKey(own))
			}
			got := h.do(front, "GET", c.uri, c.key, s)
			if got != want {
				t.Errorf("%s %s: spoofed headers changed the answer: %+v, want %+v", front, c.uri, got, want)
			}
			wantRoute, _, _ := strings.Cut(c.uri, "?")
			if got.route != wantRoute || got.method != "GET" || got.host != "api.example" || got.client != "198.51.100.7" || got.events != 1 {
				t.Errorf("%s %s: event %+v", front, c.uri, got)
			}
		}
	}
}

// TestForwardAuthFrontHeadersRequired: a subrequest without the front's
// headers, or with one of them twice, is not decided on.
func TestForwardAuthFrontHeadersRequired(t *testing.T) {
	h := newFwdHarness(t)
	for _, front := range []string{"nginx", "traefik", "caddy"} {
		f := Fronts[front]
		req := httptest.NewRequest("GET", "/public/x", nil)
		req.RemoteAddr = "127.0.0.1:5555"
		req.Header.Set(f.MethodHeader, "GET")
		req.Header.Set(f.HostHeader, "api")
		w := httptest.NewRecorder()
		h.srv[front].ForwardAuth("").ServeHTTP(w, req)
		if w.Code != 500 || !strings.Contains(w.Body.String(), f.URIHeader) {
			t.Errorf("%s without %s: %d %s", front, f.URIHeader, w.Code, w.Body)
		}
		req.Header.Add(f.URIHeader, "/v1/x")
		req.Header.Add(f.URIHeader, "/public/x")
		w = httptest.NewRecorder()
		h.srv[front].ForwardAuth("").ServeHTTP(w, req)
		if w.Code != 500 {
			t.Errorf("%s with %s twice: %d %s", front, f.URIHeader, w.Code, w.Body)
		}
	}
	// Without a front, nothing is decided.
	v, _ := newTestVerifier(t)
	w := httptest.NewRecorder()
	NewServer(v, nil, nil, HTTPConfig{}).ForwardAuth("").ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	if w.Code != 500 {
		t.Errorf("no front: %d", w.Code)
	}
}

// TestPathNotResolved: keymeter never decides on a path other than the one
// the upstream gets. A path that a proxy, a framework or the upstream could
// resolve to another one (dot segments, encoded separators, "..;",
// double encoding) is refused with 400 and no decision or event, for every
// front; /ADMIN is decided as /admin; /publicity is not under /public.
// Before the fix, /admin/..%2Fpublic was decided as /public (anonymous,
// 200) while nginx passed /admin/..%2Fpublic to the upstream.
func TestPathNotResolved(t *testing.T) {
	h := newFwdHarness(t)
	for _, c := range []struct {
		uri    string
		key    bool
		status int
		route  string
	}{
		{"/public/../admin/x", true, 400, ""},
		{"/public/%2e%2e/admin/x", true, 400, ""},
		{"/public/..%2Fadmin/x", true, 400, ""},
		{"/admin/..%2Fpublic", false, 400, ""},
		{"/admin/..%2fpublic", false, 400, ""},
		{"/admin/%2e%2e/public", false, 400, ""},
		{"/admin/%2E%2E/public", false, 400, ""},
		{"/admin/..%2Fv1", true, 400, ""},
		{"/public/..;/admin", false, 400, ""},
		{"/public;x=1/../admin", false, 400, ""},
		{"/public/%252e%252e/admin", false, 400, ""},
		{"/public/..%5Cadmin", false, 400, ""},
		{"/public\\..\\admin", false, 400, ""},
		{"/public/./x", false, 400, ""},
		{"/public/x/.", false, 400, ""},
		{"/public/x/..", false, 400, ""},
		{"//admin//x", true, 400, ""},
		{"/public//x", false, 400, ""},
		{"/public/%00", false, 400, ""},
		{"/p%zz", false, 400, ""},
		{"/p%4", false, 400, ""},
		{"/ADMIN/x", true, 403, "/ADMIN/x"},
		{"/Admin", false, 401, "/Admin"},
		{"/%61dmin/x", true, 403, "/admin/x"}, // the upstream decodes %61 too
		{"/PUBLIC/x", false, 200, "/PUBLIC/x"},
		{"/public/x/", false, 200, "/public/x/"},
		{"/public/a%20b", false, 200, "/public/a b"},
		{"/public/..x/.y", false, 200, "/public/..x/.y"},
		{"/publicity", false, 401, "/publicity"},
		{"/public", false, 200, "/public"},
		{"/adminx", true, 200, "/adminx"},
		{"/", true, 200, "/"},
	} {
		for _, front := range FrontNames() {
			got := h.do(front, "GET", c.uri, c.key, nil)
			if got.status != c.status || got.route != c.route {
				t.Errorf("%s %s: %d route %q, want %d %q", front, c.uri, got.status, got.route, c.status, c.route)
			}
			if _, err := url.ParseRequestURI(c.uri); c.status == 400 && (got.events != 0 || err == nil && got.outcome != "bad_path") {
				t.Errorf("%s %s: refused path: %d events, outcome %q", front, c.uri, got.events, got.outcome)
			}
		}
	}
}

func TestParseFront(t *testing.T) {
	if f, err := ParseFront("NGINX", "", "", ""); err != nil || f != Fronts["nginx"] {
		t.Fatalf("%+v %v", f, err)
	}
	if f, err := ParseFront("", "X-M", "X-U", ""); err != nil || f.Name != "custom" || f.URIHeader != "X-U" || f.HostHeader != "" {
		t.Fatalf("%+v %v", f, err)
	}
	if f, err := ParseFront("traefik", "", "X-My-Uri", ""); err != nil || f.URIHeader != "X-My-Uri" || f.MethodHeader != "X-Forwarded-Method" {
		t.Fatalf("%+v %v", f, err)
	}
	for _, bad := range [][4]string{{"", "", "", ""}, {"haproxy", "", "", ""}, {"", "X-M", "", ""}, {"nginx", "", "X Bad", ""}, {"envoy", "X-M", "", ""}} {
		if _, err := ParseFront(bad[0], bad[1], bad[2], bad[3]); err == nil {
			t.Errorf("ParseFront%q accepted", bad)
		}
	}
}

// FuzzForwardAuthHeaders: whatever a client adds to the spoofable headers
// changes neither the decision nor the event, for every front; whatever the
// front's URI and method, the endpoint answers without panicking and either
// refuses to decide (400/500, no event) or records the forwarded path,
// decoded, which nothing downstream resolves to another.
func FuzzForwardAuthHeaders(f *testing.F) {
	f.Add(uint8(0), "GET", "/private/x", false, "/public/x", "GET", "198.51.100.1", "for=1.2.3.4")
	f.Add(uint8(1), "POST", "/admin/x?y=1", true, "/v1/x", "OPTIONS", "10.0.0.1, x", "for=_x")
	f.Add(uint8(2), "GET", "/public/../admin", true, "/public", "HEAD", "", "")
	f.Add(uint8(3), "DELETE", "/%2e%2e/admin", false, "//public", "", "::1", "for=\"[::1]\"")
	f.Add(uint8(0), "GET", "/admin/..%2Fpublic", false, "", "", "", "")
	f.Add(uint8(1), "GET", "/public/..;/admin", false, "", "", "", "")
	f.Add(uint8(2), "GET", "/%61dmin/a%20b/", true, "", "", "", "")
	h := newFwdHarness(f)
	fronts := FrontNames()
	f.Fuzz(func(t *testing.T, fi uint8, method, uri string, key bool, spoofURI, spoofMethod, spoofAddr, spoofFwd string) {
		front := fronts[int(fi)%len(fronts)]
		fr := Fronts[front]
		if fr.URIHeader == "" && (!strings.HasPrefix(uri, "/") || strings.ContainsAny(uri, " \r\n#") || !validMethod(method)) {
			return // not a request line a front could send
		}
		if strings.ContainsAny(uri+method, "\r\n\x00") {
			return // not a header value a front could send
		}
		base := h.do(front, method, uri, key, nil)
		switch base.status {
		case 400, 500:
			if base.events != 0 {
				t.Fatalf("%s: undecided request emitted an event", front)
			}
		default:
			if base.events != 1 || !strings.HasPrefix(base.route, "/") {
				t.Fatalf("%s %q: event %+v", front, uri, base)
			}
			// The decision was on the path forwarded: one that nothing
			// downstream resolves to another (no dot or empty segment, no
			// "\\" or ";"), and its escapes decode to it.
			p, _, _ := strings.Cut(uri, "?")
			if u, err := url.Parse(p); fr.URIHeader != "" && err == nil && u.Scheme != "" {
				p = u.EscapedPath()
			}
			dec, err := url.PathUnescape(p)
			if err != nil || dec != base.route {
				t.Fatalf("%s %q: recorded route %q, not the forwarded path decoded (%q)", front, uri, base.route, dec)
			}
			for _, seg := range strings.Split(base.route, "/")[1:] {
				if seg == "." || seg == ".." || strings.ContainsAny(seg, "\\;%") {
					t.Fatalf("%s %q: decided on %q, which a proxy or upstream may resolve", front, uri, base.route)
				}
			}
			if strings.Contains(strings.TrimSuffix(base.route, "/"), "//") {
				t.Fatalf("%s %q: decided on %q with an empty segment", front, uri, base.route)
			}
		}
		spoof := http.Header{}
		vals := []string{spoofURI, spoofURI, spoofMethod, spoofMethod, spoofURI, spoofURI, spoofAddr, spoofFwd, spoofMethod}
		for i, k := range spoofable {
			if strings.ContainsAny(vals[i], "\r\n\x00") {
				continue
			}
			spoof.Set(k, vals[i])
		}
		for _, own := range []string{fr.MethodHeader, fr.URIHeader, fr.HostHeader} {
			delete(spoof, http.CanonicalHeaderKey(own))
		}
		if got := h.do(front, method, uri, key, spoof); got != base {
			t.Fatalf("%s %s %q: spoofed headers %v changed %+v into %+v", front, method, uri, spoof, base, got)
		}
	})
}
