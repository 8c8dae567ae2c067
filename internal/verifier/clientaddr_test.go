package verifier

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/keymeter/keymeter/internal/event"
)

var testTrusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}

func TestClientAddr(t *testing.T) {
	cases := []struct {
		name      string
		peer      string
		values    []string
		forwarded bool
		want      string
	}{
		{"untrusted peer: its header is ignored", "203.0.113.9:4000", []string{"198.51.100.1"}, false, "203.0.113.9"},
		{"trusted peer without header", "127.0.0.1:4000", nil, false, "127.0.0.1"},
		{"trusted peer, one hop", "127.0.0.1:4000", []string{"198.51.100.1"}, false, "198.51.100.1"},
		{"rightmost untrusted wins over the client's own claims", "127.0.0.1:4000", []string{"1.1.1.1, 2.2.2.2, 198.51.100.1, 10.0.0.5"}, false, "198.51.100.1"},
		{"several header lines are one list", "127.0.0.1:4000", []string{"1.1.1.1", "198.51.100.1", "10.0.0.5"}, false, "198.51.100.1"},
		{"all trusted: the leftmost", "127.0.0.1:4000", []string{"10.0.0.7, 10.0.0.5"}, false, "10.0.0.7"},
		{"unparsable hop stops the walk at the proxy that reported it", "127.0.0.1:4000", []string{"1.1.1.1, garbage, 10.0.0.5"}, false, "10.0.0.5"},
		{"unparsable last entry: the peer, never anything else", "127.0.0.1:4000", []string{"1.1.1.1, unknown"}, false, "127.0.0.1"},
		{"empty entry is unparsable", "127.0.0.1:4000", []string{"1.1.1.1,"}, false, "127.0.0.1"},
		{"port and brackets", "127.0.0.1:4000", []string{"[2001:db8::1]:443"}, false, "2001:db8::1"},
		{"IPv4 with port", "127.0.0.1:4000", []string{"198.51.100.1:5555"}, false, "198.51.100.1"},
		{"mapped IPv6 unmapped", "[::ffff:127.0.0.1]:4000", []string{"::ffff:198.51.100.1"}, false, "198.51.100.1"},
		{"untrusted IPv6 peer", "[2001:db8::2]:4000", []string{"198.51.100.1"}, false, "2001:db8::2"},
		{"canonical form", "127.0.0.1:4000", []string{"2001:DB8:0::1"}, false, "2001:db8::1"},
		{"unparsable peer kept as given", "@", []string{"198.51.100.1"}, false, "@"},
		{"Forwarded", "127.0.0.1:4000", []string{`for=1.1.1.1, for=198.51.100.1;proto=https;by=10.0.0.5`}, true, "198.51.100.1"},
		{"Forwarded quoted IPv6 with port", "127.0.0.1:4000", []string{`For="[2001:db8:cafe::17]:4711"`}, true, "2001:db8:cafe::17"},
		{"Forwarded through trusted hops", "127.0.0.1:4000", []string{`for=198.51.100.1`, `for=10.0.0.5;host=x`}, true, "198.51.100.1"},
		{"Forwarded obfuscated stops", "127.0.0.1:4000", []string{`for=1.1.1.1, for=_hidden, for=10.0.0.5`}, true, "10.0.0.5"},
		{"Forwarded element without for= stops", "127.0.0.1:4000", []string{`for=1.1.1.1, proto=https`}, true, "127.0.0.1"},
		{"Forwarded quoted escape is not an address", "127.0.0.1:4000", []string{`for=1.1.1.1, for="1.2.3.4\"`}, true, "127.0.0.1"},
		{"X-Forwarded-For syntax in Forwarded is not a hop", "127.0.0.1:4000", []string{`198.51.100.1`}, true, "127.0.0.1"},
	}
	for _, c := range cases {
		a, s := ClientAddr(c.peer, c.values, c.forwarded, testTrusted)
		if s != c.want {
			t.Errorf("%s: got %q (%v), want %q", c.name, s, a, c.want)
		}
		if a.IsValid() && a.String() != s {
			t.Errorf("%s: address %v and string %q disagree", c.name, a, s)
		}
	}
}

// TestClientAddrSameInEveryMode: the proxy/middleware and the forward-auth
// endpoint record the same client address for the same request, X-Real-Ip
// is never read and Forwarded is, when configured. X-Real-Ip and a
// Forwarded-only chain fooled the earlier code.
func TestClientAddrSameInEveryMode(t *testing.T) {
	v, _ := newTestVerifier(t, Route{Prefix: "/", Anonymous: true, AnonRatePerS: 1000, AnonBurst: 1000})
	cases := []struct {
		name   string
		hdr    http.Header
		fwdHdr string
		want   string
	}{
		{"X-Real-Ip is not a fallback for an unparsable last entry", http.Header{"X-Forwarded-For": {"198.51.100.1, bogus"}, "X-Real-Ip": {"192.0.2.66"}}, "", "127.0.0.1"},
		{"X-Real-Ip alone is ignored", http.Header{"X-Real-Ip": {"192.0.2.66"}}, "", "127.0.0.1"},
		{"Forwarded when configured", http.Header{"Forwarded": {"for=198.51.100.1"}, "X-Forwarded-For": {"192.0.2.66"}}, "Forwarded", "198.51.100.1"},
		{"X-Forwarded-For by default, Forwarded ignored", http.Header{"Forwarded": {"for=198.51.100.1"}, "X-Forwarded-For": {"192.0.2.66"}}, "", "192.0.2.66"},
	}
	for _, c := range cases {
		var got []string
		srv := NewServer(v, nil, nil, HTTPConfig{TrustedProxies: testTrusted, ForwardedHeader: c.fwdHdr, Front: Fronts["envoy"]})
		srv.emitHook = func(e *event.Event) { got = append(got, e.ClientIP) }
		for _, h := range []http.Handler{srv.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})), srv.ForwardAuth("")} {
			req := httptest.NewRequest("GET", "/x", nil)
			req.RemoteAddr = "127.0.0.1:5555"
			for k, vs := range c.hdr {
				req.Header[k] = vs
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
		if len(got) != 2 || got[0] != c.want || got[1] != c.want {
			t.Errorf("%s: middleware and forward auth recorded %q, want %q twice", c.name, got, c.want)
		}
	}
}

// FuzzClientAddr checks the properties the algorithm exists for: a client
// can prepend whatever it likes to the forwarding header without changing
// an answer that is not a trusted address; an untrusted peer is always the
// answer; the answer is the peer or an address of the header.
func FuzzClientAddr(f *testing.F) {
	f.Add("127.0.0.1:1", "1.1.1.1, 198.51.100.1, 10.0.0.5", "9.9.9.9", false)
	f.Add("127.0.0.1:1", "for=198.51.100.1;proto=https, for=10.0.0.5", `for="[::1]:80"`, true)
	f.Add("203.0.113.1:1", "198.51.100.1", "", false)
	f.Add("[::1]:1", "[2001:db8::1]:80, unknown", "x", false)
	f.Add("127.0.0.1:1", `for="a,b"`, `for=1.2.3.4;for=5.6.7.8`, true)
	f.Fuzz(func(t *testing.T, peer, header, prefix string, forwarded bool) {
		var vals []string
		if header != "" {
			vals = []string{header}
		}
		a, s := ClientAddr(peer, vals, forwarded, testTrusted)
		a2, s2 := ClientAddr(peer, vals, forwarded, testTrusted)
		if a != a2 || s != s2 {
			t.Fatal("not deterministic")
		}
		host := peer
		if h, _, err := net.SplitHostPort(peer); err == nil {
			host = h
		}
		p, perr := netip.ParseAddr(host)
		if perr == nil && !isTrusted(testTrusted, p) && a != p.Unmap().WithZone("") {
			t.Fatalf("untrusted peer %s: got %v", peer, a)
		}
		if a.IsValid() && a.String() != s {
			t.Fatalf("address %v and string %q disagree", a, s)
		}
		if a.IsValid() && perr == nil && a != p.Unmap().WithZone("") {
			// Not the peer: an address that appears in the header.
			if !headerHasAddr(header, a, forwarded) {
				t.Fatalf("answer %v appears neither as the peer nor in %q", a, header)
			}
		}
		// A client prepends its own entries (a separate line, or the same
		// line before a comma): an untrusted answer stays.
		if a.IsValid() && !isTrusted(testTrusted, a) && len(vals) > 0 {
			for _, spoofed := range [][]string{{prefix, header}, {prefix + "," + header}} {
				b, bs := ClientAddr(peer, spoofed, forwarded, testTrusted)
				if b != a || bs != s {
					t.Fatalf("prefix %q changed the answer from %v to %v (header %q)", prefix, a, b, header)
				}
			}
		}
	})
}

// headerHasAddr: some hop of header parses to a.
func headerHasAddr(header string, a netip.Addr, forwarded bool) bool {
	for _, e := range strings.Split(header, ",") {
		tok := e
		if forwarded {
			var ok bool
			if tok, ok = forwardedFor(e); !ok {
				continue
			}
		}
		if b, ok := parseHop(tok); ok && b == a {
			return true
		}
	}
	return false
}

// TestProxyForwardsClientAddr: the upstream behind the proxy gets the
// client address keymeter decided on, and none of the client's claims.
func TestProxyForwardsClientAddr(t *testing.T) {
	v, _ := newTestVerifier(t, Route{Prefix: "/", Anonymous: true, AnonRatePerS: 1000, AnonBurst: 1000})
	up, seen := newUpstream(t)
	u, _ := url.Parse(up.URL)
	srv := NewServer(v, nil, nil, HTTPConfig{TrustedProxies: testTrusted})
	req := httptest.NewRequest("GET", "/x", nil)
	req.RemoteAddr = "127.0.0.1:5555"
	req.Header.Set("X-Forwarded-For", "1.1.1.1, 198.51.100.1")
	req.Header.Set("X-Real-Ip", "192.0.2.66")
	req.Header.Set("Forwarded", "for=192.0.2.67")
	w := httptest.NewRecorder()
	srv.Proxy(u).ServeHTTP(w, req)
	got := seen.last()
	if w.Code != 200 || got == nil {
		t.Fatalf("%d", w.Code)
	}
	if xff := got.Header.Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "198.51.100.1" || got.Header.Get("X-Real-Ip") != "" || got.Header.Get("Forwarded") != "" {
		t.Fatalf("upstream saw X-Forwarded-For %q, X-Real-Ip %q, Forwarded %q", xff, got.Header.Get("X-Real-Ip"), got.Header.Get("Forwarded"))
	}
}
