package verifier

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// TestProxyPathNotResolved: in proxy mode the upstream gets the path as
// the client sent it, so keymeter decides on that path or refuses it.
// Before the fix, /admin/..%2Fpublic was decided as /public (anonymous)
// and forwarded as /admin/..%2Fpublic; /ADMIN/x fell to the default route.
func TestProxyPathNotResolved(t *testing.T) {
	v, tbl := newTestVerifier(t, Route{Prefix: "/public", Anonymous: true, AnonRatePerS: 1e9, AnonBurst: 1 << 30}, Route{Prefix: "/admin", Scope: "admin"})
	plain := testKey(t, tbl, newState(0, 0))
	var mu sync.Mutex
	var got []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.RequestURI)
		mu.Unlock()
		_, _ = io.WriteString(w, "upstream")
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	addr := serveReal(t, NewServer(v, nil, nil, HTTPConfig{}).Proxy(u))
	for _, c := range []struct {
		path   string
		key    bool
		status int
	}{
		{"/admin/..%2Fpublic", false, 400},
		{"/admin/..%2fpublic", false, 400},
		{"/admin/%2e%2e/public", false, 400},
		{"/admin/../public", false, 400},
		{"/admin/..%2Fv1", true, 400},
		{"/public/..;/admin", false, 400},
		{"/public/%252e%252e/admin", false, 400},
		{"/public/..%5Cadmin", false, 400},
		{"/public\\..\\admin", false, 400},
		{"/public//x", false, 400},
		{"/public/./x", false, 400},
		{"/ADMIN/x", true, 403},
		{"/Admin/x", false, 401},
		{"/%61dmin/x", true, 403},
		{"/public/x", false, 200},
		{"/public/a%20b/", false, 200},
		{"/v1/x", true, 200},
	} {
		mu.Lock()
		got = nil
		mu.Unlock()
		hdr := ""
		if c.key {
			hdr = "X-Api-Key: " + plain + "\r\n"
		}
		st, raw := rawRequest(t, addr, "GET "+c.path+" HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"+hdr+"\r\n")
		mu.Lock()
		reached := append([]string(nil), got...)
		mu.Unlock()
		if st != c.status {
			t.Errorf("%s: %d, want %d (%s)", c.path, st, c.status, raw)
		}
		switch {
		case c.status == 200 && (len(reached) != 1 || reached[0] != c.path):
			t.Errorf("%s: the upstream got %q, want exactly the path decided on", c.path, reached)
		case c.status != 200 && len(reached) != 0:
			t.Errorf("%s: refused, yet the upstream got %q", c.path, reached)
		}
		if c.status == 400 && !strings.Contains(raw, "bad_path") {
			t.Errorf("%s: 400 without bad_path: %s", c.path, raw)
		}
	}
}

// TestProxyIdentityNotStrippable: a client naming the identity headers in
// Connection made ReverseProxy drop them (hop-by-hop) after the middleware
// set them, so the upstream saw an allowed request without its key id.
func TestProxyIdentityNotStrippable(t *testing.T) {
	v, tbl := newTestVerifier(t, Route{Prefix: "/public", Anonymous: true, AnonRatePerS: 1e9, AnonBurst: 1 << 30})
	st := newState(0, 0)
	secret := testKey(t, tbl, st)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "key="+strings.Join(r.Header.Values(HeaderKeyID), ",")+" project="+strings.Join(r.Header.Values(HeaderProject), ","))
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	addr := serveReal(t, NewServer(v, nil, nil, HTTPConfig{}).Proxy(u))
	for _, c := range []struct {
		name, hdr, want string
	}{
		{"key, identity named in Connection", "X-Api-Key: " + secret + "\r\nConnection: X-Keymeter-Key-Id, X-Keymeter-Project\r\n", "key=" + st.Id + " project=proj_test"},
		{"key, split Connection", "X-Api-Key: " + secret + "\r\nConnection: keep-alive\r\nConnection: x-keymeter-key-id\r\n", "key=" + st.Id + " project=proj_test"},
		{"anonymous, forged identity named in Connection", "X-Keymeter-Key-Id: key_forged\r\nConnection: X-Keymeter-Project\r\n", "key= project="},
	} {
		status, body := rawRequest(t, addr, "GET /public/x HTTP/1.1\r\nHost: api\r\n"+c.hdr+"\r\n")
		if status != 200 || body != c.want {
			t.Errorf("%s: %d %q, want 200 %q", c.name, status, body, c.want)
		}
	}
}

// TestQueryParamNotInForwardAuth: in forward auth the proxy forwards the
// original URI, key included, and keymeter cannot strip it, so a
// forward-auth verifier refuses --query-param at start, and the
// forward-auth endpoint never takes a key from the query (before the fix
// it did, and the key went on to the upstream's URI and logs).
func TestQueryParamNotInForwardAuth(t *testing.T) {
	b := startNATS(t).connect(context.Background())
	fwd := RunConfig{Bus: b, Listen: "127.0.0.1:0", DataDir: t.TempDir(), HTTP: HTTPConfig{Front: Fronts["nginx"], QueryParam: "api_key"}}
	if err := fwd.Validate(); err == nil || !strings.Contains(err.Error(), "--query-param") {
		t.Errorf("forward auth with --query-param: %v", err)
	}
	proxy := RunConfig{Bus: b, Listen: "127.0.0.1:0", AuthListen: "127.0.0.1:0", Upstream: "http://127.0.0.1:9", DataDir: t.TempDir(), HTTP: HTTPConfig{Front: Fronts["nginx"], QueryParam: "api_key"}}
	if err := proxy.Validate(); err != nil {
		t.Errorf("proxy mode with --query-param: %v", err)
	}

	v, tbl := newTestVerifier(t)
	secret := testKey(t, tbl, newState(0, 0))
	for front, f := range Fronts {
		srv := NewServer(v, nil, nil, HTTPConfig{Front: f, QueryParam: "api_key", TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
		uri := "/v1/x?api_key=" + url.QueryEscape(secret)
		req := httptest.NewRequest("GET", "/", nil)
		if f.URIHeader == "" {
			req = httptest.NewRequest("GET", uri, nil)
		} else {
			req.Header.Set(f.MethodHeader, "GET")
			req.Header.Set(f.URIHeader, uri)
			req.Header.Set(f.HostHeader, "api")
		}
		req.RemoteAddr = "127.0.0.1:5555"
		w := httptest.NewRecorder()
		srv.ForwardAuth("").ServeHTTP(w, req)
		if w.Code == 200 || w.Header().Get(HeaderOutcome) != "missing" {
			t.Errorf("%s: key in the query: %d outcome %q, want missing", front, w.Code, w.Header().Get(HeaderOutcome))
		}
	}
}
