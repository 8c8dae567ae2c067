package verifier

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// serveReal serves h on a loopback listener with the verifier's server
// settings (a real net/http server: the body handling under test is its).
func serveReal(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	return ln.Addr().String()
}

// slowRequest sends head and the first bytes of a 100000-byte body, then
// reads the answer while the rest of the body is still unsent. The read
// deadline only keeps a broken server from hanging the test: the answer
// must come without any more of the body.
func slowRequest(t *testing.T, addr, head string) (*http.Response, string, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, head+"Content-Length: 100000\r\n\r\n0123456789"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer while the body is incomplete (90 KB unsent): %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// The server closes the connection instead of draining the body.
	_, err = br.ReadByte()
	closed := err == io.EOF
	return resp, string(b), closed
}

// TestRefusalDoesNotReadBody is issue 12 finding 3: an unauthenticated
// request announcing a 100 KB body and sending it slowly got no answer
// until the whole body was in (Go drains it before replying).
func TestRefusalDoesNotReadBody(t *testing.T) {
	v, _ := newTestVerifier(t)
	up, _ := newUpstream(t)
	u, _ := url.Parse(up.URL)
	srv := NewServer(v, nil, nil, HTTPConfig{TrustedProxies: testTrusted, Front: Fronts["nginx"]})
	for _, c := range []struct {
		name string
		h    http.Handler
		head string
		want int
	}{
		{"proxy", srv.Proxy(u), "POST /v1/items HTTP/1.1\r\nHost: api\r\n", 401},
		{"middleware", srv.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) })), "PUT /v1/items HTTP/1.1\r\nHost: api\r\nX-Api-Key: km_live_bad\r\n", 401},
		{"forward auth", srv.ForwardAuth(""), "POST / HTTP/1.1\r\nHost: keymeter\r\nX-Original-Method: POST\r\nX-Original-Uri: /v1/items\r\nX-Original-Host: api\r\n", 401},
		{"admin", NoBody(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(405) })), "POST /healthz HTTP/1.1\r\nHost: admin\r\n", 405},
	} {
		resp, body, closed := slowRequest(t, serveReal(t, c.h), c.head)
		if resp.StatusCode != c.want || !closed || !resp.Close {
			t.Errorf("%s: %d %q, connection closed %v (header %v); want %d and closed", c.name, resp.StatusCode, body, closed, resp.Close, c.want)
		}
	}
}

// TestAllowedBodyTimeout: an allowed request's body must arrive within
// BodyTimeout (it had no bound); a body that did arrive does not let the
// deadline cancel a slower upstream.
func TestAllowedBodyTimeout(t *testing.T) {
	v, tbl := newTestVerifier(t)
	k := testKeyState(t, tbl, 0, 0)
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		if r.URL.Path == "/slow" {
			<-release // answers only after the verifier's body deadline
		}
		_, _ = io.WriteString(w, "done")
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	srv := NewServer(v, nil, nil, HTTPConfig{BodyTimeout: 50 * time.Millisecond})
	addr := serveReal(t, srv.Proxy(u))

	resp, body, closed := slowRequest(t, addr, "POST /v1/items HTTP/1.1\r\nHost: api\r\nX-Api-Key: "+k.secret+"\r\n")
	if resp.StatusCode != http.StatusRequestTimeout || !closed {
		t.Errorf("slow body: %d %q closed %v; want 408 and closed", resp.StatusCode, body, closed)
	}

	// A complete body, then an upstream that answers after the deadline
	// would have passed: the answer still arrives.
	go func() { time.Sleep(300 * time.Millisecond); close(release) }()
	req, _ := http.NewRequest("POST", "http://"+addr+"/slow", strings.NewReader("payload"))
	req.Header.Set("X-Api-Key", k.secret)
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r2.Body)
	r2.Body.Close()
	if r2.StatusCode != 200 || string(b) != "done" {
		t.Errorf("slow upstream after a complete body: %d %q", r2.StatusCode, b)
	}
}
