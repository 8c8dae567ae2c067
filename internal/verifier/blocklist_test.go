package verifier

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
)

// TestBlockIPDecision: an enforced block_ip decision published on the bus
// makes a running verifier refuse that address; dry-run decisions do not.
func TestBlockIPDecision(t *testing.T) { backends(t, false, testBlockIPDecision) }

func testBlockIPDecision(t *testing.T, be testBackend) {
	ctx := context.Background()
	b := be.connect(ctx)
	svc := newService(t, ctx, b, nil)
	up, _ := newUpstream(t)
	rv := startVerifier(t, b, RunConfig{Upstream: up.URL})
	k, err := svc.Create(ctx, keys.CreateParams{Project: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, rv, k.Secret.Reveal(), "valid")
	publish := func(mode keymeterv1.Mode) {
		d := &keymeterv1.Decision{Id: "dec_1", TimeUnixNano: time.Now().UnixNano(), RuleId: "stuffing", Mode: mode,
			Action: keymeterv1.Action_ACTION_BLOCK_IP, ClientIp: "127.0.0.1", DurationMs: 60_000}
		data, _ := proto.Marshal(d)
		if err := b.PublishDecision(ctx, "127.0.0.1", data); err != nil {
			t.Fatal(err)
		}
	}
	publish(keymeterv1.Mode_MODE_DRY_RUN)
	time.Sleep(200 * time.Millisecond)
	if resp, _ := do(t, "GET", rv.main+"/x", map[string]string{"X-API-Key": k.Secret.Reveal()}); resp.StatusCode != 200 {
		t.Fatalf("dry-run decision applied: %d", resp.StatusCode)
	}
	publish(keymeterv1.Mode_MODE_ENFORCE)
	unknown, _ := keys.Generate(keys.EnvLive)
	waitOutcome(t, rv, unknown.Reveal(), "blocked_ip")
	if resp, body := do(t, "GET", rv.main+"/x", map[string]string{"X-API-Key": unknown.Reveal()}); resp.StatusCode != 403 {
		t.Fatalf("blocked address, unknown key: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, "GET", rv.main+"/x", nil); resp.StatusCode != 403 {
		t.Fatalf("blocked address, no key: %d %s", resp.StatusCode, body)
	}
	// A valid key from the blocked address still passes (shared NAT).
	if resp, body := do(t, "GET", rv.main+"/x", map[string]string{"X-API-Key": k.Secret.Reveal()}); resp.StatusCode != 200 {
		t.Fatalf("blocked address, valid key: %d %s", resp.StatusCode, body)
	}
}

// TestBlockIPBeforeStart: a verifier started after an enforced block_ip
// decision still refuses the address (recent decisions are replayed); with
// BlockValidKeys (--block-valid-keys), even its valid keys.
func TestBlockIPBeforeStart(t *testing.T) { backends(t, false, testBlockIPBeforeStart) }

func testBlockIPBeforeStart(t *testing.T, be testBackend) {
	ctx := context.Background()
	b := be.connect(ctx)
	svc := newService(t, ctx, b, nil)
	k, err := svc.Create(ctx, keys.CreateParams{Project: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	d := &keymeterv1.Decision{Id: "dec_early", TimeUnixNano: time.Now().UnixNano(), RuleId: "stuffing", Mode: keymeterv1.Mode_MODE_ENFORCE,
		Action: keymeterv1.Action_ACTION_BLOCK_IP, ClientIp: "127.0.0.1", DurationMs: 600_000}
	data, _ := proto.Marshal(d)
	if err := b.PublishDecision(ctx, "127.0.0.1", data); err != nil {
		t.Fatal(err)
	}
	up, _ := newUpstream(t)
	rv := startVerifier(t, b, RunConfig{Upstream: up.URL, BlockValidKeys: true})
	waitOutcome(t, rv, k.Secret.Reveal(), "blocked_ip")
}

// TestRotationGraceEndToEnd: after Rotate both keys verify on a running
// verifier; once the grace period ends, the old one is refused as expired.
func TestRotationGraceEndToEnd(t *testing.T) {
	ctx := context.Background()
	n := startNATS(t)
	b := n.connect(ctx)
	svc := newService(t, ctx, b, nil)
	up, _ := newUpstream(t)
	rv := startVerifier(t, b, RunConfig{Upstream: up.URL})
	old, err := svc.Create(ctx, keys.CreateParams{Project: "acme", KeyLimits: keys.KeyLimits{Scopes: []string{"read"}}})
	if err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, rv, old.Secret.Reveal(), "valid")
	const grace = 500 * time.Millisecond
	nw, err := svc.Rotate(ctx, old.State.GetId(), grace)
	if err != nil {
		t.Fatal(err)
	}
	rotated := time.Now()
	waitOutcome(t, rv, nw.Secret.Reveal(), "valid")
	if time.Since(rotated) < grace/2 {
		for _, s := range []string{old.Secret.Reveal(), nw.Secret.Reveal()} {
			if resp, _ := do(t, "GET", rv.main+"/x", map[string]string{"X-API-Key": s}); resp.StatusCode != 200 {
				t.Fatalf("during grace: %d", resp.StatusCode)
			}
		}
	}
	time.Sleep(time.Until(rotated.Add(grace)))
	waitOutcome(t, rv, old.Secret.Reveal(), "expired")
	waitOutcome(t, rv, nw.Secret.Reveal(), "valid")
	if nw.State.GetReplaces() != old.State.GetId() || len(nw.State.GetScopes()) != 1 {
		t.Fatalf("new key state: %v", nw.State)
	}
}

// TestRevocationAfterBusRestart: the key-state watch survives a NATS
// restart: a revocation made after it still reaches the running verifier.
func TestRevocationAfterBusRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: restarts the NATS server")
	}
	ctx := context.Background()
	n := startNATS(t)
	b := n.connect(ctx)
	svc := newService(t, ctx, b, nil)
	up, _ := newUpstream(t)
	rv := startVerifier(t, b, RunConfig{Upstream: up.URL})
	k, err := svc.Create(ctx, keys.CreateParams{Project: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, rv, k.Secret.Reveal(), "valid")
	n.stop()
	time.Sleep(300 * time.Millisecond)
	n.start()
	restarted := time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = svc.Revoke(ctx, k.State.GetId(), "after restart")
		if err == nil || time.Now().After(deadline) {
			break
		}
		t.Logf("revoke %v after restart: %v", time.Since(restarted).Round(time.Millisecond), err)
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	waitOutcome(t, rv, k.Secret.Reveal(), "revoked")
	t.Logf("revoke returned %v after the restart; the verifier refused the key %v later",
		revoked.Sub(restarted).Round(time.Millisecond), time.Since(revoked).Round(time.Millisecond))
	k2, err := svc.Create(ctx, keys.CreateParams{Project: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, rv, k2.Secret.Reveal(), "valid")
}

// TestBlockListNetwork: a block_ip decision whose client_ip is a network
// (a rule grouped by net24(ip)) blocks every address of that network and
// nothing outside it; addresses and v4-mapped forms alike.
func TestBlockListNetwork(t *testing.T) {
	var bl BlockList
	now := time.Now()
	d := &keymeterv1.Decision{Id: "d1", TimeUnixNano: now.UnixNano(), Mode: keymeterv1.Mode_MODE_ENFORCE,
		Action: keymeterv1.Action_ACTION_BLOCK_IP, ClientIp: "203.0.113.0/24", DurationMs: 60_000}
	data, _ := proto.Marshal(d)
	bl.Apply(data, slog.New(slog.DiscardHandler))
	d6 := &keymeterv1.Decision{Id: "d2", TimeUnixNano: now.UnixNano(), Mode: keymeterv1.Mode_MODE_ENFORCE,
		Action: keymeterv1.Action_ACTION_BLOCK_IP, ClientIp: "2001:db8:1::/48", DurationMs: 60_000}
	data, _ = proto.Marshal(d6)
	bl.Apply(data, slog.New(slog.DiscardHandler))
	at := now.Add(time.Second).UnixNano()
	for _, c := range []struct {
		ip      string
		blocked bool
	}{
		{"203.0.113.1", true}, {"203.0.113.254", true}, {"::ffff:203.0.113.77", true},
		{"203.0.114.1", false}, {"198.51.100.1", false},
		{"2001:db8:1:2::9", true}, {"2001:db8:2::1", false},
	} {
		if got := bl.Blocked(netip.MustParseAddr(c.ip), 0, at); got != c.blocked {
			t.Errorf("Blocked(%s) = %v, want %v", c.ip, got, c.blocked)
		}
	}
	if bl.Blocked(netip.MustParseAddr("203.0.113.1"), 0, now.Add(2*time.Minute).UnixNano()) {
		t.Error("network block did not expire")
	}
}

// TestBlockListASN: a block_ip decision whose client_ip is AS<n> (a rule
// grouped by asn) blocks requests carrying that AS number from any
// address, and neither another AS number nor an unknown one (0); a
// malformed AS target is refused with a warning.
func TestBlockListASN(t *testing.T) {
	var bl BlockList
	now := time.Now()
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	for i, target := range []string{"AS21638", "ASx", "AS0", "AS", "as64500", "AS99999999999"} {
		d := &keymeterv1.Decision{Id: fmt.Sprintf("d%d", i), TimeUnixNano: now.UnixNano(), Mode: keymeterv1.Mode_MODE_ENFORCE,
			Action: keymeterv1.Action_ACTION_BLOCK_IP, ClientIp: target, DurationMs: 60_000}
		data, _ := proto.Marshal(d)
		bl.Apply(data, log)
	}
	if bl.Len() != 1 || !bl.HasASNs() {
		t.Fatalf("block list has %d entries (ASNs: %v), want the one ASN", bl.Len(), bl.HasASNs())
	}
	if n := strings.Count(logs.String(), "without a valid client_ip"); n != 5 {
		t.Errorf("%d refusals logged, want 5:\n%s", n, logs.String())
	}
	at := now.Add(time.Second).UnixNano()
	for _, c := range []struct {
		ip      string
		asn     uint32
		blocked bool
	}{
		{"198.51.100.1", 21638, true}, {"203.0.113.9", 21638, true}, {"2001:db8::1", 21638, true},
		{"198.51.100.1", 21639, false}, {"198.51.100.1", 0, false}, {"198.51.100.1", 64500, false},
	} {
		if got := bl.Blocked(netip.MustParseAddr(c.ip), c.asn, at); got != c.blocked {
			t.Errorf("Blocked(%s, AS%d) = %v, want %v", c.ip, c.asn, got, c.blocked)
		}
	}
	if bl.Blocked(netip.MustParseAddr("198.51.100.1"), 21638, now.Add(2*time.Minute).UnixNano()) {
		t.Error("ASN block did not expire")
	}
	// An address block after the ASN block keeps it.
	bl.Block(netip.MustParseAddr("192.0.2.1"), now.Add(time.Minute))
	if !bl.Blocked(netip.MustParseAddr("198.51.100.1"), 21638, at) || !bl.Blocked(netip.MustParseAddr("192.0.2.1"), 0, at) {
		t.Error("adding an address block lost the ASN block")
	}
}

// TestASNBlockHeader: an AS<n> decision applied to the verifier's block
// list refuses keyless and bad-key requests whose --asn-header names that
// ASN, from any address; another ASN, a missing header and a valid key
// pass (BlockValidKeys off).
func TestASNBlockHeader(t *testing.T) {
	v, tbl := newTestVerifier(t)
	k := testKeyState(t, tbl, 0, 0)
	d := &keymeterv1.Decision{Id: "d1", TimeUnixNano: time.Now().UnixNano(), Mode: keymeterv1.Mode_MODE_ENFORCE,
		Action: keymeterv1.Action_ACTION_BLOCK_IP, ClientIp: "AS21638", DurationMs: 60_000}
	data, _ := proto.Marshal(d)
	v.Blocks().Apply(data, slog.New(slog.DiscardHandler))
	h := NewServer(v, nil, nil, HTTPConfig{ASNHeader: "X-Client-ASN"}).Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for _, c := range []struct {
		ip, asn, key string
		status       int
	}{
		{"198.51.100.1", "21638", "km_live_nope", http.StatusForbidden},
		{"203.0.113.200", "AS21638", "", http.StatusForbidden},
		{"2001:db8::5", "21638", "km_live_nope", http.StatusForbidden},
		{"198.51.100.1", "21638", k.secret, http.StatusOK},
		{"198.51.100.1", "21639", "km_live_nope", http.StatusUnauthorized},
		{"198.51.100.1", "", "km_live_nope", http.StatusUnauthorized},
	} {
		req := httptest.NewRequest("GET", "/x", nil)
		req.RemoteAddr = netip.AddrPortFrom(netip.MustParseAddr(c.ip), 1234).String()
		if c.asn != "" {
			req.Header.Set("X-Client-ASN", c.asn)
		}
		if c.key != "" {
			req.Header.Set("X-API-Key", c.key)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != c.status {
			t.Errorf("%s ASN %q key %q: status %d, want %d", c.ip, c.asn, c.key, w.Code, c.status)
		}
	}
}
