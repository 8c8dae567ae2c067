package verifier

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/keys"
)

// echoUpgradeUpstream answers an Upgrade request with 101 and then echoes
// every line, prefixed with the key id it got (as the outside test's wsup).
func echoUpgradeUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			_, _ = io.WriteString(w, "plain\n")
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		sc := bufio.NewScanner(brw)
		for sc.Scan() {
			if _, err := fmt.Fprintf(c, "echo(%s): %s\n", r.Header.Get(HeaderKeyID), sc.Text()); err != nil {
				return
			}
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// wsTunnel is a client's upgraded connection through the verifier.
type wsTunnel struct {
	c  net.Conn
	br *bufio.Reader
}

func openTunnel(t *testing.T, addr, secret string) *wsTunnel {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // bounds a failing test only
	fmt.Fprintf(c, "GET /v1/ws HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", secret)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	return &wsTunnel{c: c, br: br}
}

// echo sends a line and returns the answer (err when the tunnel is closed).
func (w *wsTunnel) echo(msg string) (string, error) {
	_ = w.c.SetDeadline(time.Now().Add(30 * time.Second)) // bounds a failing test only
	if _, err := fmt.Fprintf(w.c, "%s\n", msg); err != nil {
		return "", err
	}
	return w.br.ReadString('\n')
}

// waitClosed waits until the verifier closes the tunnel: a read returns
// EOF or a reset. A timeout is a failure (the bound is for a failing test).
func (w *wsTunnel) waitClosed(t *testing.T, name string) {
	t.Helper()
	_ = w.c.SetDeadline(time.Now().Add(30 * time.Second))
	for {
		_, _ = fmt.Fprintf(w.c, "still there?\n") // may fail once closed
		l, err := w.br.ReadString('\n')
		if err == nil {
			if !strings.HasPrefix(l, "echo(") {
				t.Fatalf("%s: unexpected %q", name, l)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if isTimeout(err) {
			t.Fatalf("%s: the tunnel stayed open 30 s after the key change", name)
		}
		return
	}
}

// TestTunnelClosedOnRevocation is the outside test's finding 6: an upgraded
// (WebSocket) connection went on working after its key was revoked. The
// verifier runs as in production (Run, embedded NATS); the key service
// revokes one key and suspends another over the bus; their tunnels are
// closed, a third key's tunnel stays open.
func TestTunnelClosedOnRevocation(t *testing.T) {
	ctx := context.Background()
	n := startNATS(t)
	b := n.connect(ctx)
	svc := newService(t, ctx, b, nil)
	up := echoUpgradeUpstream(t)
	rv := startVerifier(t, b, RunConfig{Upstream: up, HTTP: HTTPConfig{TunnelCheck: 20 * time.Millisecond}})
	addr := strings.TrimPrefix(rv.main, "http://")

	var ks [3]keys.Created
	for i := range ks {
		k, err := svc.Create(ctx, keys.CreateParams{Project: "acme"})
		if err != nil {
			t.Fatal(err)
		}
		ks[i] = k
	}
	for _, k := range ks {
		waitOutcome(t, rv, k.Secret.Reveal(), "valid")
	}
	var tun [3]*wsTunnel
	for i, k := range ks {
		tun[i] = openTunnel(t, addr, k.Secret.Reveal())
		if l, err := tun[i].echo("hello"); err != nil || l != "echo("+k.State.GetId()+"): hello\n" {
			t.Fatalf("tunnel %d: %q %v", i, l, err)
		}
	}

	start := time.Now()
	if err := svc.Revoke(ctx, ks[0].State.GetId(), "leaked"); err != nil {
		t.Fatal(err)
	}
	tun[0].waitClosed(t, "revoked key's tunnel")
	t.Logf("revoked key's tunnel closed %v after Revoke returned", time.Since(start))
	if err := svc.Suspend(ctx, ks[1].State.GetId()); err != nil {
		t.Fatal(err)
	}
	tun[1].waitClosed(t, "suspended key's tunnel")
	// New requests with those keys are refused too; the third key's tunnel
	// still works.
	waitOutcome(t, rv, ks[0].Secret.Reveal(), "revoked")
	waitOutcome(t, rv, ks[1].Secret.Reveal(), "suspended")
	if l, err := tun[2].echo("after"); err != nil || l != "echo("+ks[2].State.GetId()+"): after\n" {
		t.Fatalf("untouched key's tunnel: %q %v", l, err)
	}
	_, metrics := do(t, "GET", rv.admin+"/metrics", nil)
	for _, want := range []string{"keymeter_verifier_tunnels_open 1", "keymeter_verifier_tunnels_closed_total 2"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// One event per tunnel, status 101, written when it closes: the two
	// closed ones now, the open one when the verifier stops (it closes
	// the tunnel before flushing the events).
	if err := rv.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := tun[2].br.ReadString('\n'); err == nil || isTimeout(err) {
		t.Errorf("the untouched key's tunnel is still open after the verifier stopped (%v)", err)
	}
	got := map[string]int{}
	for _, ev := range readAllEvents(t, ctx, b) {
		if ev.Route == "/v1/ws" {
			if ev.Status != http.StatusSwitchingProtocols {
				t.Errorf("tunnel event of %s: status %d, want 101", ev.KeyID, ev.Status)
			}
			got[ev.KeyID]++
		}
	}
	for _, k := range ks {
		if got[k.State.GetId()] != 1 {
			t.Errorf("key %s: %d tunnel events, want 1", k.State.GetId(), got[k.State.GetId()])
		}
	}
}

// TestTunnelClosedOnExpiry: a key's tunnel closes once the key expires,
// without any update from the bus.
func TestTunnelClosedOnExpiry(t *testing.T) {
	v, tbl := newTestVerifier(t)
	st := newState(0, 0)
	st.ExpiresUnixNano = time.Now().Add(time.Hour).UnixNano()
	secret := testKey(t, tbl, st)
	up := echoUpgradeUpstream(t)
	srv := NewServer(v, nil, nil, HTTPConfig{TunnelCheck: 10 * time.Millisecond})
	clock := newFakeClock(time.Now())
	srv.tunnels.now = clock.now
	u := mustURL(t, up)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Proxy(u)}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	w := openTunnel(t, ln.Addr().String(), secret)
	if _, err := w.echo("a"); err != nil {
		t.Fatal(err)
	}
	if n := srv.tunnels.count(); n != 1 {
		t.Fatalf("%d tunnels tracked, want 1", n)
	}
	clock.set(time.Now().Add(2 * time.Hour))
	w.waitClosed(t, "expired key's tunnel")
	for deadline := time.Now().Add(30 * time.Second); srv.tunnels.count() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("closed tunnel still tracked")
		}
	}
}

// fakeClock is a clock a test moves (read from the sweep's goroutine).
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.set(t)
	return c
}

func (c *fakeClock) set(t time.Time) { c.ns.Store(t.UnixNano()) }
func (c *fakeClock) now() time.Time  { return time.Unix(0, c.ns.Load()) }

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
