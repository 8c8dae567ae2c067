package verifier

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
)

// BenchmarkMiddleware is the per-request cost of the front around a no-op
// handler: extraction, Verify, headers, metrics and event emission to a real
// embedded NATS (the batcher's background work included in the CPU time).
func BenchmarkMiddleware(b *testing.B) {
	ctx := context.Background()
	n := startNATS(b)
	bb := n.connect(ctx)
	v, tbl := newTestVerifier(b)
	secret := testKey(b, tbl, &keymeterv1.KeyState{RateLimitPerS: 1e9, RateLimitBurst: 1 << 20})
	em, err := NewEmitter(EmitterConfig{Publisher: bb.Publisher(), Partitions: bb.Partitions(), Producer: "bench", DataDir: b.TempDir(), QueueSize: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer em.Close(ctx)
	h := NewServer(v, em, mustMetrics(b, tbl, em), HTTPConfig{}).Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	req := httptest.NewRequest("GET", "/v1/items", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	req.RemoteAddr = "203.0.113.7:5555"
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		w.Body.Reset()
		h.ServeHTTP(w, req)
	}
	b.StopTimer()
	time.Sleep(100 * time.Millisecond)
	st := em.Stats()
	if st.Dropped > 0 {
		b.Logf("dropped %d of %d", st.Dropped, st.Emitted)
	}
}

// BenchmarkForwardAuth is the per-subrequest cost of the forward-auth
// endpoint behind nginx (front headers, client address through a trusted
// proxy, Verify, answer headers), without emission.
func BenchmarkForwardAuth(b *testing.B) {
	v, tbl := newTestVerifier(b)
	secret := testKey(b, tbl, &keymeterv1.KeyState{RateLimitPerS: 1e9, RateLimitBurst: 1 << 20})
	h := NewServer(v, nil, nil, HTTPConfig{Front: Fronts["nginx"], TrustedProxies: testTrusted}).ForwardAuth("")
	req := httptest.NewRequest("GET", "/_keymeter", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("X-Original-Method", "GET")
	req.Header.Set("X-Original-Uri", "/v1/items?page=2")
	req.Header.Set("X-Original-Host", "api.example")
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	req.RemoteAddr = "127.0.0.1:5555"
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
}

func mustMetrics(t testing.TB, tbl *keys.Table, em *Emitter) *Metrics {
	t.Helper()
	m, err := NewMetrics(nil, tbl, em)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
