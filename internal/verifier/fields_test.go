package verifier

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/keymeter/keymeter/internal/event"
)

func TestTruncateUTF8(t *testing.T) {
	cases := []struct {
		s    string
		max  int
		want string
	}{
		{"", 4, ""},
		{"abc", 3, "abc"},
		{"abcd", 3, "abc"},
		{"abc", 0, ""},
		{"héllo", 2, "h"},                   // é is 2 bytes: cut inside it drops it
		{"héllo", 3, "hé"},                  // cut right after it keeps it
		{"a€b", 3, "a"},                     // € is 3 bytes
		{"a€b", 4, "a€"},                    //
		{"a€b", 2, "a"},                     //
		{"x😀y", 4, "x"},                     // 😀 is 4 bytes
		{"x😀y", 5, "x😀"},                    //
		{"x😀y", 1, "x"},                     //
		{"😀", 3, ""},                        // nothing fits
		{"\xff\xfe\xfd\xfc", 2, "\xff\xfe"}, // not UTF-8: cut at max bytes
		{"ab\x80\x80\x80\x80\x80", 5, "ab\x80\x80\x80"},
	}
	for _, c := range cases {
		got := truncateUTF8(c.s, c.max)
		if got != c.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", c.s, c.max, got, c.want)
		}
		if len(got) > c.max && c.max >= 0 {
			t.Errorf("truncateUTF8(%q, %d) = %q: longer than max", c.s, c.max, got)
		}
	}
	// Every cut of valid UTF-8 stays valid and is the longest valid prefix.
	s := strings.Repeat("aé€😀", 50)
	for max := 0; max <= len(s)+1; max++ {
		got := truncateUTF8(s, max)
		if !utf8.ValidString(got) || !strings.HasPrefix(s, got) || len(got) > max || max-len(got) >= utf8.UTFMax && len(got) < len(s) {
			t.Fatalf("max %d: got %d bytes %q", max, len(got), got)
		}
	}
}

// TestBoundEvent: every request-derived field is cut to its limit, and an
// event with huge fields encodes to a few KiB.
func TestBoundEvent(t *testing.T) {
	huge := strings.Repeat("é", 1<<20) // 2 MiB
	ev := event.Event{ID: "v-1-1", Time: time.Now(), Method: huge, Host: huge, Route: "/" + huge, UserAgent: huge,
		ClientIP: huge, Project: huge, KeyID: huge, VerifierID: "v"}
	boundEvent(&ev)
	for _, f := range []struct {
		name string
		v    string
		max  int
	}{{"method", ev.Method, MaxEventMethod}, {"host", ev.Host, MaxEventHost}, {"route", ev.Route, MaxEventRoute},
		{"user_agent", ev.UserAgent, MaxEventUserAgent}, {"client_ip", ev.ClientIP, MaxEventClientIP},
		{"project", ev.Project, MaxEventIdentity}, {"key_id", ev.KeyID, MaxEventIdentity}} {
		if len(f.v) > f.max || len(f.v) < f.max-1 || !utf8.ValidString(f.v) {
			t.Errorf("%s: %d bytes (max %d), valid UTF-8 %v", f.name, len(f.v), f.max, utf8.ValidString(f.v))
		}
	}
	enc := event.AppendEvent(nil, &ev)
	if len(enc) > 8<<10 {
		t.Fatalf("bounded event encodes to %d bytes", len(enc))
	}
	if b := eventBound(&ev); b < len(enc)+2 {
		t.Fatalf("eventBound %d below the encoded size %d (+ its tag and length)", b, len(enc))
	}
}

// TestForwardAuthEventBounded: through every front's forward-auth
// endpoint, the path, host, method and user agent the front passes on
// (8 KB and more each, as a client can make nginx pass them) are cut to
// their limits in the usage event.
func TestForwardAuthEventBounded(t *testing.T) {
	h := newFwdHarness(t)
	uri := "/public/" + strings.Repeat("p", 8000)
	host := strings.Repeat("h", 8000) + ".example"
	ua := strings.Repeat("Mozilla/5.0 ", 1000)
	for name, f := range Fronts {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if f.URIHeader == "" {
			req = httptest.NewRequest(http.MethodGet, uri, nil)
			req.Host = host
		} else {
			req.Header.Set(f.MethodHeader, "GET")
			req.Header.Set(f.URIHeader, uri)
			if f.HostHeader != "" {
				req.Header.Set(f.HostHeader, host)
			} else {
				req.Host = host
			}
		}
		req.RemoteAddr = "127.0.0.1:5555"
		req.Header.Set("X-Forwarded-For", "198.51.100.7")
		req.Header.Set("User-Agent", ua)
		h.last = nil
		w := httptest.NewRecorder()
		h.srv[name].ForwardAuth("").ServeHTTP(w, req)
		ev := h.last
		if ev == nil {
			t.Errorf("%s: no event (status %d)", name, w.Code)
			continue
		}
		if len(ev.Route) != MaxEventRoute || !strings.HasPrefix(ev.Route, "/public/p") || len(ev.UserAgent) > MaxEventUserAgent ||
			len(ev.Host) > MaxEventHost || len(ev.Method) > MaxEventMethod {
			t.Errorf("%s: status %d, event not bounded: route %d, host %d, user agent %d, method %d bytes", name, w.Code,
				len(ev.Route), len(ev.Host), len(ev.UserAgent), len(ev.Method))
		}
	}
}
