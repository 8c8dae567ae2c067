package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	proxydeploy "github.com/keymeter/keymeter/deploy/proxy"
	"github.com/keymeter/keymeter/internal/testfix/freeport"
	"github.com/keymeter/keymeter/internal/verifier"
)

// nginxBench is `bench proxy --nginx`: Debian's nginx with the shipped
// deploy/proxy/nginx.conf (ports and paths rewritten, as the verifier's nginx
// test does) in front of the same upstream, once as shipped (auth_request to
// a keymeter forward-auth verifier, --front nginx --trusted-proxy
// 127.0.0.1/32) and once without its auth_request line (nginx alone).
type nginxBench struct {
	aloneURL, authURL string
	stop              func()
}

func startNginxBench(ctx context.Context, cfg ProxyConfig, upstreamAddr, secret string) (*nginxBench, error) {
	bin := cfg.NginxBin
	if bin == "" {
		bin = "/usr/sbin/nginx"
	}
	src, name := proxydeploy.NginxConf, "the shipped deploy/proxy/nginx.conf"
	if cfg.NginxConf != "" {
		var err error
		if src, err = os.ReadFile(cfg.NginxConf); err != nil {
			return nil, fmt.Errorf("bench proxy --nginx-conf: %w", err)
		}
		name = cfg.NginxConf
	}
	if !strings.Contains(string(src), "auth_request /_keymeter;") || !strings.Contains(string(src), "127.0.0.1:8081") {
		return nil, fmt.Errorf("bench proxy --nginx: %s: no \"auth_request /_keymeter;\" or keymeter upstream 127.0.0.1:8081 to rewrite", name)
	}
	authAddr, stopV, err := startForwardAuthVerifier(ctx, cfg, secret)
	if err != nil {
		return nil, err
	}
	nb := &nginxBench{}
	var stops []func()
	nb.stop = func() {
		for _, s := range stops {
			s()
		}
		stopV()
	}
	for _, withAuth := range []bool{false, true} {
		name := "alone"
		if withAuth {
			name = "auth"
		}
		conf := string(src)
		if !withAuth {
			conf = strings.Replace(conf, "auth_request /_keymeter;", "", 1)
		}
		addr, stop, err := startNginx(bin, conf, filepath.Join(cfg.DataDir, "nginx-"+name), authAddr, upstreamAddr)
		if err != nil {
			nb.stop()
			return nil, err
		}
		stops = append(stops, stop)
		if withAuth {
			nb.authURL = "http://" + addr + "/v1/items"
		} else {
			nb.aloneURL = "http://" + addr + "/v1/items"
		}
	}
	return nb, nil
}

// startNginx runs nginx (bin) on conf, with its ports and paths rewritten to
// a free port, authAddr, upstreamAddr and dir, and returns its address once
// it listens.
func startNginx(bin, conf, dir, authAddr, upstreamAddr string) (string, func(), error) {
	// From below the kernel's ephemeral range: nothing else binds it
	// before nginx does (see freeport).
	port, err := freeport.Get()
	if err != nil {
		return "", nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	conf = strings.NewReplacer(":8080", fmt.Sprintf(":%d", port), "127.0.0.1:8081", authAddr,
		"127.0.0.1:9000", upstreamAddr, "/tmp/keymeter-nginx", filepath.Join(dir, "nginx")).Replace(conf)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return "", nil, err
	}
	// nginx's own log goes to a file (its stderr would be copied by a
	// goroutine of its own, racing with this process's progress lines).
	logPath := filepath.Join(dir, "error.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "-e", "stderr", "-p", dir, "-c", path, "-g", "daemon off;")
	cmd.Stderr = logf
	err = cmd.Start()
	logf.Close() // the child has its own descriptor
	if err != nil {
		return "", nil, fmt.Errorf("bench proxy --nginx: start %s: %w", bin, err)
	}
	stop := func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			msg, _ := os.ReadFile(logPath)
			return "", nil, fmt.Errorf("bench proxy --nginx: nginx (%s) did not listen on %s within 10s: %s", path, addr, strings.TrimSpace(string(msg)))
		}
	}
}

// startForwardAuthVerifier runs a verifier in forward-auth mode as the
// shipped nginx.conf's comment says: --front nginx --trusted-proxy 127.0.0.1/32.
func startForwardAuthVerifier(ctx context.Context, cfg ProxyConfig, secret string) (string, func(), error) {
	vctx, stopV := context.WithCancel(context.Background())
	addrs := make(chan string, 1)
	verr := make(chan error, 1)
	go func() {
		verr <- verifier.Run(vctx, verifier.RunConfig{
			Listen: "127.0.0.1:0", HTTP: verifier.HTTPConfig{Front: verifier.Fronts["nginx"], TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
			DataDir: filepath.Join(cfg.DataDir, "nginx-auth-verifier"), VerifierID: "bench-nginx-auth", Bus: cfg.Bus, Logger: cfg.Logger,
			OnListen: func(m, _, _ net.Addr) { addrs <- m.String() },
		})
	}()
	var addr string
	select {
	case addr = <-addrs:
	case err := <-verr:
		stopV()
		return "", nil, err
	case <-ctx.Done():
		stopV()
		return "", nil, ctx.Err()
	}
	stop := func() { stopV(); <-verr }
	// Ready once the last key written verifies (as nginx will ask).
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		if ok, _ := authOK(rctx, "http://"+addr+"/", secret); ok {
			return addr, stop, nil
		}
		select {
		case <-rctx.Done():
			stop()
			return "", nil, fmt.Errorf("forward-auth verifier not ready after a minute: %w", rctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// authOK asks a forward-auth verifier (nginx front) about GET /v1/items
// with secret, as nginx's subrequest would.
func authOK(ctx context.Context, u, secret string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("X-Original-Method", "GET")
	req.Header.Set("X-Original-URI", "/v1/items")
	req.Header.Set("X-Original-Host", "api.example.com")
	req.Header.Set("X-Forwarded-For", "127.0.0.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}
