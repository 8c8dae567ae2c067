package verifier

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/keys"
)

// newService returns a key Service on b, with its own watched table,
// logging to log (nil: nowhere).
func newService(t testing.TB, ctx context.Context, b bus.KeyLog, log *slog.Logger) *keys.Service {
	t.Helper()
	var opts []keys.Option
	if log != nil {
		opts = append(opts, keys.WithLogger(log))
	}
	tbl, err := keys.NewTable(keys.TableConfig{KeepState: true}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = tbl.Run(ctx, b) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-tbl.Ready():
	case <-time.After(60 * time.Second): // bounds a failing test only
		t.Fatal("service table not loaded")
	}
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: b, Table: tbl}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

type runningVerifier struct {
	main, auth, admin string
	stop              func() error
}

// startVerifier runs the verifier role (Run) against b.
func startVerifier(t testing.TB, b bus.Bus, cfg RunConfig) *runningVerifier {
	t.Helper()
	cfg.Bus = b
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	cfg.AuthListen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	if cfg.HTTP.Front.Name == "" {
		cfg.HTTP.Front = Fronts["envoy"] // tests call the endpoints directly
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.VerifierID == "" {
		cfg.VerifierID = "vtest"
	}
	if cfg.Emitter.FlushInterval == 0 {
		cfg.Emitter.FlushInterval = 5 * time.Millisecond
	}
	addrs := make(chan [3]net.Addr, 1)
	cfg.OnListen = func(a, b, c net.Addr) { addrs <- [3]net.Addr{a, b, c} }
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Run(ctx, cfg) }()
	var a [3]net.Addr
	select {
	case a = <-addrs:
	case err := <-errc:
		t.Fatalf("verifier did not start: %v", err)
	}
	rv := &runningVerifier{main: "http://" + a[0].String(), auth: "http://" + a[1].String(), admin: "http://" + a[2].String()}
	var once sync.Once
	var stopErr error
	rv.stop = func() error {
		once.Do(func() { cancel(); stopErr = <-errc })
		return stopErr
	}
	t.Cleanup(func() { _ = rv.stop() })
	// Ready once the key table is loaded.
	deadline := time.Now().Add(60 * time.Second) // bounds a failing test only
	for {
		resp, err := http.Get(rv.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("verifier never became ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return rv
}

type upstreamSeen struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func newUpstream(t testing.TB) (*httptest.Server, *upstreamSeen) {
	seen := &upstreamSeen{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.mu.Lock()
		seen.reqs = append(seen.reqs, r.Clone(context.Background()))
		seen.mu.Unlock()
		if r.URL.Path == "/teapot" {
			w.WriteHeader(http.StatusTeapot)
		}
		_, _ = io.WriteString(w, "hello from upstream\n")
	}))
	t.Cleanup(srv.Close)
	return srv, seen
}

func (u *upstreamSeen) last() *http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		return nil
	}
	return u.reqs[len(u.reqs)-1]
}

func do(t testing.TB, method, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestProxyEndToEnd(t *testing.T) { backends(t, false, testProxyEndToEnd) }

func testProxyEndToEnd(t *testing.T, be testBackend) {
	ctx := context.Background()
	b := be.connect(ctx)
	svc := newService(t, ctx, b, nil)
	up, seen := newUpstream(t)

	rv := startVerifier(t, b, RunConfig{Upstream: up.URL, HTTP: HTTPConfig{QueryParam: "api_key", CountryHeader: "CF-IPCountry", ASNHeader: "X-Client-ASN"},
		Routes: []Route{{Prefix: "/public", Anonymous: true, AnonRatePerS: 100}, {Prefix: "/admin", Scope: "admin"}}})

	k, err := svc.Create(ctx, keys.CreateParams{Project: "acme", Name: "ci", KeyLimits: keys.KeyLimits{RatePerS: 1, Burst: 3}})
	if err != nil {
		t.Fatal(err)
	}
	secret := k.Secret.Reveal()
	id := k.State.GetId()

	// Created keys verify on the running verifier once the update arrives.
	waitOutcome(t, rv, secret, "valid")

	// Valid through X-API-Key: the upstream gets the identity, and the
	// client's own identity headers are replaced.
	resp, body := do(t, "GET", rv.main+"/v1/items", map[string]string{"X-API-Key": secret, HeaderKeyID: "key_forged"})
	if resp.StatusCode != 200 || !strings.Contains(body, "hello") {
		t.Fatalf("valid key: %d %s", resp.StatusCode, body)
	}
	if got := seen.last().Header.Get(HeaderKeyID); got != id {
		t.Fatalf("upstream saw key id %q, want %q", got, id)
	}
	if resp.Header.Get("RateLimit-Policy") == "" || resp.Header.Get("RateLimit") == "" {
		t.Errorf("missing RateLimit headers: %v", resp.Header)
	}

	// Query-parameter key is removed before forwarding.
	resp, _ = do(t, "GET", rv.main+"/v1/items?x=1&api_key="+secret+"&y=2", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("query key: %d", resp.StatusCode)
	}
	if q := seen.last().URL.RawQuery; q != "x=1&y=2" || strings.Contains(seen.last().RequestURI, secret) {
		t.Fatalf("upstream saw query %q", q)
	}

	// Burst exhausted: 429 with Retry-After and a JSON body. A key of its
	// own with one request of burst, the next a thousand seconds later:
	// with the 1/s key above, a loaded machine taking over a second for the
	// requests so far had a token back and answered 200.
	lim, err := svc.Create(ctx, keys.CreateParams{Project: "acme", Name: "limited", KeyLimits: keys.KeyLimits{RatePerS: keys.MinRate, Burst: 1}})
	if err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, rv, lim.Secret.Reveal(), "valid") // spends the burst
	resp, body = do(t, "GET", rv.main+"/v1/items", map[string]string{"Authorization": "Bearer " + lim.Secret.Reveal()})
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || resp.Header.Get("RateLimit") == "" {
		t.Fatalf("rate limit: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	var jb struct {
		Error struct {
			Code   string
			Status int
		}
	}
	if err := json.Unmarshal([]byte(body), &jb); err != nil || jb.Error.Code != "rate_limited" || jb.Error.Status != 429 {
		t.Fatalf("refusal body %q", body)
	}

	// Missing key: 401; anonymous route: allowed.
	if resp, _ := do(t, "GET", rv.main+"/v1/items", nil); resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("missing: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", rv.main+"/public/x", nil); resp.StatusCode != 200 {
		t.Fatalf("anonymous route: %d", resp.StatusCode)
	}

	// Raise the limit, then revoke through the Service: the running
	// verifier refuses the key once the update arrives over the bus.
	rate := 1000.0
	if err := svc.Update(ctx, id, keys.UpdateParams{RatePerS: &rate}); err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, rv, secret, "valid")
	start := time.Now()
	if err := svc.Revoke(ctx, id, "leaked in a public repo"); err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, rv, secret, "revoked")
	t.Logf("revocation reached the verifier %v after Revoke returned", time.Since(start))

	// Upstream status and bytes go into the events.
	k2, _ := svc.Create(ctx, keys.CreateParams{Project: "acme"})
	waitOutcome(t, rv, k2.Secret.Reveal(), "valid")
	resp, _ = do(t, "GET", rv.main+"/teapot", map[string]string{"X-API-Key": k2.Secret.Reveal(), "CF-IPCountry": "de", "X-Client-ASN": "AS3320"})
	if resp.StatusCode != 418 {
		t.Fatalf("teapot: %d", resp.StatusCode)
	}

	// Metrics.
	_, metrics := do(t, "GET", rv.admin+"/metrics", nil)
	for _, want := range []string{`keymeter_verifier_decisions_total{outcome="valid"}`, `keymeter_verifier_decisions_total{outcome="revoked"}`,
		"keymeter_verifier_verify_seconds_bucket", "keymeter_verifier_keys 3", "keymeter_verifier_events_emitted_total", "keymeter_verifier_bus_up 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if err := rv.stop(); err != nil {
		t.Fatal(err)
	}
	// Find the teapot event downstream.
	var teapot *event.Event
	evs := readAllEvents(t, ctx, b)
	for i := range evs {
		if evs[i].Route == "/teapot" {
			teapot = &evs[i]
		}
		if strings.Contains(evs[i].Route, secret) || strings.Contains(evs[i].UserAgent, secret) {
			t.Fatal("secret in an event")
		}
	}
	if teapot == nil || teapot.Status != 418 || teapot.BytesOut != uint64(len("hello from upstream\n")) || teapot.KeyID != k2.State.GetId() || teapot.Project != "acme" ||
		teapot.Country != "DE" || teapot.ASN != 3320 || teapot.ClientIP != "127.0.0.1" || teapot.Method != "GET" || teapot.LatencyUS == 0 {
		t.Fatalf("teapot event: %+v", teapot)
	}
}

// waitOutcome polls the forward-auth endpoint until key gets outcome.
func waitOutcome(t testing.TB, rv *runningVerifier, key, outcome string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // bounds a failing test only
	for {
		resp, _ := do(t, "GET", rv.auth+"/", map[string]string{"Authorization": "Bearer " + key})
		if resp.Header.Get(HeaderOutcome) == outcome {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key never got outcome %s (last %s)", outcome, resp.Header.Get(HeaderOutcome))
		}
		time.Sleep(time.Millisecond)
	}
}

func readAllEvents(t testing.TB, ctx context.Context, b bus.Bus) []event.Event {
	t.Helper()
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: fmt.Sprintf("read-all-%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close(context.Background())
	var out []event.Event
	var batch event.Batch
	empty := 0
	for {
		ds, err := cons.Fetch(ctx, 100, 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			// Kafka may take a moment to assign partitions to a new group.
			if empty++; len(out) > 0 || empty > 20 {
				return out
			}
			continue
		}
		for _, d := range ds {
			if err := event.DecodeBatch(bytes.Clone(d.Data), &batch); err != nil {
				t.Fatal(err)
			}
			out = append(out, batch.Events...)
			batch.Events = nil
			_ = cons.Ack(ctx, d)
		}
	}
}

func TestForwardAuthStyles(t *testing.T) {
	v, tbl := newTestVerifier(t, Route{Prefix: "/admin", Scope: "admin"})
	limited := testKeyState(t, tbl, 1, 1)
	cases := []struct {
		name       string
		front      string
		path       string
		hdr        map[string]string
		wantStatus int
		wantKeyID  bool
	}{
		{"traefik", "traefik", "/", map[string]string{"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/x?y=1", "X-Forwarded-Host": "api", "X-Forwarded-For": "203.0.113.7", "Authorization": "Bearer " + limited.secret}, 200, true},
		{"caddy rate limited", "caddy", "/", map[string]string{"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/x", "X-Forwarded-Host": "api", "X-Api-Key": limited.secret}, 429, false},
		{"nginx rate limited is 403", "nginx", "/", map[string]string{"X-Original-Method": "GET", "X-Original-Uri": "/v1/x", "X-Original-Host": "api", "X-Api-Key": limited.secret}, 403, false},
		{"envoy path prefix, scope from original path", "envoy", "/ext-authz/admin/users", map[string]string{"Authorization": "Bearer " + limited.secret}, 403, false},
		{"missing", "traefik", "/", map[string]string{"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/x", "X-Forwarded-Host": "api"}, 401, false},
		{"nginx without its headers is not decided on", "nginx", "/", map[string]string{"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/x"}, 500, false},
		{"nginx URI not a path", "nginx", "/", map[string]string{"X-Original-Method": "GET", "X-Original-Uri": "mailto:x", "X-Original-Host": "api"}, 403, false}, // X-Keymeter-Status: 400
		{"traefik URI not a path", "traefik", "/", map[string]string{"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "mailto:x", "X-Forwarded-Host": "api"}, 400, false},
		{"nginx absolute form", "nginx", "/", map[string]string{"X-Original-Method": "GET", "X-Original-Uri": "http://evil/admin/x", "X-Original-Host": "api", "X-Api-Key": limited.secret}, 403, false},
		{"nginx method not a token", "nginx", "/", map[string]string{"X-Original-Method": "G T", "X-Original-Uri": "/v1/x", "X-Original-Host": "api"}, 400, false},
	}
	for _, c := range cases {
		srv := NewServer(v, nil, nil, HTTPConfig{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Front: Fronts[c.front]})
		h := srv.ForwardAuth("/ext-authz")
		req := httptest.NewRequest("GET", c.path, nil)
		req.RemoteAddr = "127.0.0.1:5555"
		for k, v := range c.hdr {
			req.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != c.wantStatus {
			t.Errorf("%s: status %d, want %d (%s)", c.name, w.Code, c.wantStatus, w.Body)
		}
		if got := w.Header().Get(HeaderKeyID) != ""; got != c.wantKeyID && c.wantStatus == 200 {
			t.Errorf("%s: key id header present=%v", c.name, got)
		}
		if c.name == "nginx absolute form" && w.Header().Get(HeaderOutcome) != "scope_denied" {
			t.Errorf("absolute form: outcome %q, want scope_denied", w.Header().Get(HeaderOutcome))
		}
		if c.name == "nginx rate limited is 403" && w.Header().Get(HeaderStatus) != "429" {
			t.Errorf("nginx: X-Keymeter-Status %q", w.Header().Get(HeaderStatus))
		}
	}
}

type issued struct{ secret, id string }

func testKeyState(t testing.TB, tbl *keys.Table, rate float64, burst uint32) issued {
	st := newState(rate, burst)
	s := testKey(t, tbl, st)
	return issued{secret: s, id: st.Id}
}
