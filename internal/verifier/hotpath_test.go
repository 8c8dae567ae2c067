package verifier

import (
	"net/http"
	"testing"
	"time"
)

// The rate-limit headers are built in one string and one array: each
// value must be exactly its own, and changing one must not touch the other.
func TestSetLimitHeadersValues(t *testing.T) {
	h := http.Header{}
	d := Decision{Limited: true, Limit: 100, Remaining: 7, WindowNs: int64(time.Second), ResetNs: int64(1500 * time.Millisecond)}
	setLimitHeaders(h, &d)
	if got := h["Ratelimit-Policy"]; len(got) != 1 || got[0] != `"key";q=100;w=1` {
		t.Fatalf("RateLimit-Policy = %q", got)
	}
	if got := h["Ratelimit"]; len(got) != 1 || got[0] != `"key";r=7;t=2` {
		t.Fatalf("RateLimit = %q", got)
	}
	h.Add("Ratelimit-Policy", "x") // appending to one must not overwrite the other
	if got := h["Ratelimit"]; len(got) != 1 || got[0] != `"key";r=7;t=2` {
		t.Fatalf("RateLimit after adding to the policy = %q", got)
	}
	if n := testing.AllocsPerRun(100, func() { setLimitHeaders(http.Header{}, &d) }); n > 4 {
		t.Fatalf("setLimitHeaders allocates %.0f times per call, want at most 4 (map, two entries' string and array)", n)
	}
}

// The proxy's copy buffers are reused and always full size.
func TestCopyBuffersReused(t *testing.T) {
	var p bufferPool
	b := p.Get()
	if len(b) != 32<<10 {
		t.Fatalf("Get: len %d, want 32 KiB", len(b))
	}
	p.Put(b[:10]) // ReverseProxy hands back what it got; a short slice still has the room
	if got := p.Get(); len(got) != 32<<10 {
		t.Fatalf("Get after Put: len %d, want 32 KiB", len(got))
	}
	p.Put(make([]byte, 100)) // too small: dropped
	for range 3 {
		if got := p.Get(); len(got) != 32<<10 {
			t.Fatalf("Get: len %d, want 32 KiB", len(got))
		}
	}
}
