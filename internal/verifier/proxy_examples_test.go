package verifier

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/keys"
)

// TestProxyExamples runs the example configs of deploy/proxy with the real
// proxies (Debian's nginx and caddy packages) in front of a running
// verifier in forward-auth mode. Opt in with KEYMETER_PROXY_EXAMPLES=1
// (apt-get install nginx-light caddy): the proxies are not part of the
// pipeline's own components.
func TestProxyExamples(t *testing.T) {
	if os.Getenv("KEYMETER_PROXY_EXAMPLES") == "" {
		t.Skip("set KEYMETER_PROXY_EXAMPLES=1 to run deploy/proxy examples against nginx and caddy")
	}
	ctx := context.Background()
	n := startNATS(t)
	b := n.connect(ctx)
	svc := newService(t, ctx, b, nil)
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "key="+r.Header.Get(HeaderKeyID)+" project="+r.Header.Get(HeaderProject))
	})}
	go func() { _ = up.Serve(upLn) }()
	defer up.Close()
	authPort := freePort(t)
	rv := startVerifier(t, b, RunConfig{Listen: "127.0.0.1:" + authPort, Routes: []Route{{Prefix: "/public", Anonymous: true, AnonRatePerS: 100}}})
	// One rate-limited key per proxy; the key-state log is ordered, so once
	// the revocation made last is visible, so are they.
	limited := map[string]keys.Created{}
	for _, p := range []string{"nginx", "caddy"} {
		k, err := svc.Create(ctx, keys.CreateParams{Project: "acme", KeyLimits: keys.KeyLimits{RatePerS: 0.1, Burst: 2}})
		if err != nil {
			t.Fatal(err)
		}
		limited[p] = k
	}
	revoked, _ := svc.Create(ctx, keys.CreateParams{Project: "acme"})
	_ = svc.Revoke(ctx, revoked.State.GetId(), "test")
	waitOutcome(t, rv, revoked.Secret.Reveal(), "revoked")

	for _, proxy := range []string{"nginx", "caddy"} {
		t.Run(proxy, func(t *testing.T) {
			k := limited[proxy]
			if _, err := exec.LookPath(proxy); err != nil {
				t.Fatalf("%s not installed: %v", proxy, err)
			}
			dir := t.TempDir()
			port := freePort(t)
			file := map[string]string{"nginx": "nginx.conf", "caddy": "Caddyfile"}[proxy]
			src, err := os.ReadFile(filepath.Join("..", "..", "deploy", "proxy", file))
			if err != nil {
				t.Fatal(err)
			}
			conf := strings.NewReplacer(":8080", ":"+port, ":8081", ":"+authPort, "127.0.0.1:9000", upLn.Addr().String(),
				"/tmp/keymeter-nginx", filepath.Join(dir, "nginx")).Replace(string(src))
			path := filepath.Join(dir, file)
			if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
				t.Fatal(err)
			}
			var cmd *exec.Cmd
			if proxy == "nginx" {
				cmd = exec.Command("nginx", "-c", path, "-g", "daemon off;")
			} else {
				cmd = exec.Command("caddy", "run", "--config", path, "--adapter", "caddyfile")
				cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
			base := "http://127.0.0.1:" + port
			deadline := time.Now().Add(10 * time.Second)
			for {
				if c, err := net.Dial("tcp", "127.0.0.1:"+port); err == nil {
					c.Close()
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s did not start", proxy)
				}
				time.Sleep(20 * time.Millisecond)
			}
			steps := []struct {
				path    string
				hdr     map[string]string
				status  int
				body    string
				outcome string
			}{
				{"/v1/x", map[string]string{"X-API-Key": k.Secret.Reveal(), HeaderKeyID: "key_forged"}, 200, "key=" + k.State.GetId() + " project=acme", ""},
				{"/v1/x", map[string]string{"Authorization": "Bearer " + k.Secret.Reveal()}, 200, "key=" + k.State.GetId(), ""},
				{"/v1/x", map[string]string{"Authorization": "Bearer " + k.Secret.Reveal()}, 429, `"rate_limited"`, "rate_limited"},
				{"/v1/x", nil, 401, `"missing"`, "missing"},
				{"/v1/x", map[string]string{"X-API-Key": "km_live_bad"}, 401, `"malformed"`, "malformed"},
				{"/v1/x", map[string]string{"X-API-Key": revoked.Secret.Reveal()}, 401, `"revoked"`, "revoked"},
				{"/public/x", map[string]string{HeaderKeyID: "key_forged"}, 200, "key= project=", ""},
			}
			for i, s := range steps {
				resp, body := do(t, "GET", base+s.path, s.hdr)
				if resp.StatusCode != s.status || !strings.Contains(body, s.body) || resp.Header.Get(HeaderOutcome) != s.outcome {
					t.Errorf("step %d: %d %q outcome %q; want %d containing %q, outcome %q", i, resp.StatusCode, body, resp.Header.Get(HeaderOutcome), s.status, s.body, s.outcome)
				}
				if s.status == 429 && (resp.Header.Get("Retry-After") == "" || resp.Header.Get("RateLimit") == "") {
					t.Errorf("step %d: 429 without Retry-After/RateLimit: %v", i, resp.Header)
				}
			}
		})
	}
}

func freePort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
