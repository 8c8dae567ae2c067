package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/bench/proc"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/ctxtime"
	"github.com/keymeter/keymeter/internal/verifier"
)

// ProxyConfig is `keymeter bench proxy`: the same upstream through a bare
// httputil.ReverseProxy and through the verifier, and the forward-auth
// endpoint alone.
type ProxyConfig struct {
	Bus         bus.Bus
	Backend     string // for the summary
	Connections int
	Duration    time.Duration // of each measurement
	Rounds      int
	Keys        int
	DataDir     string // the verifier's spool
	// DurableLog also measures a verifier with the durable event log,
	// alternating with the others (durable_* figures).
	DurableLog bool
	// Nginx also measures Debian's nginx (NginxBin, default /usr/sbin/nginx)
	// with the shipped NginxConf, alone and with keymeter forward-auth,
	// alternating with the others (nginx_* figures).
	Nginx     bool
	NginxBin  string
	NginxConf string
	// CPUProfile, if set, is the file written with a CPU profile of the
	// first verifier round.
	CPUProfile string
	Logger     *slog.Logger
	Output
}

// RunProxy runs the rounds and prints the summary.
func RunProxy(ctx context.Context, cfg ProxyConfig) error {
	if cfg.Bus == nil || cfg.DataDir == "" || cfg.Connections < 1 || cfg.Rounds < 1 || cfg.Keys < 1 || cfg.Duration <= 0 {
		return errors.New("bench proxy: a bus, a data directory, and positive connections, rounds, keys and duration are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CPUProfile != "" { // a path that cannot be written fails now, not after the rounds
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		f.Close()
	}
	secrets, _, err := PutKeys(ctx, cfg.Bus, cfg.Keys, "proj_bench", 0)
	if err != nil {
		return err
	}
	body := []byte(`{"items":[{"id":1,"name":"widget"},{"id":2,"name":"gadget"}]}` + "\n")
	upstream, err := serveLoopback(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	if err != nil {
		return err
	}
	defer upstream.Close()
	uu, _ := url.Parse("http://" + upstream.Addr)
	bareProxy := httputil.NewSingleHostReverseProxy(uu)
	bareProxy.Transport = verifier.UpstreamTransport() // the same pool size as the verifier's
	bare, err := serveLoopback(bareProxy)
	if err != nil {
		return err
	}
	defer bare.Close()
	// The bare proxy with the verifier's pool of copy buffers: without one
	// ReverseProxy allocates 32 KiB per response, which the verifier does
	// not; the difference to this one is verification and metering alone.
	pooledProxy := httputil.NewSingleHostReverseProxy(uu)
	pooledProxy.Transport = verifier.UpstreamTransport()
	pooledProxy.BufferPool = verifier.CopyBufferPool()
	pooled, err := serveLoopback(pooledProxy)
	if err != nil {
		return err
	}
	defer pooled.Close()
	va, stop, err := startBenchVerifier(ctx, cfg, uu.String(), secrets[len(secrets)-1], false)
	if err != nil {
		return err
	}
	defer stop()
	durableURL := ""
	if cfg.DurableLog {
		vd, stopD, err := startBenchVerifier(ctx, cfg, uu.String(), secrets[len(secrets)-1], true)
		if err != nil {
			return err
		}
		defer stopD()
		durableURL = "http://" + vd[0] + "/v1/items"
	}
	var ng *nginxBench
	if cfg.Nginx {
		if ng, err = startNginxBench(ctx, cfg, upstream.Addr, secrets[len(secrets)-1]); err != nil {
			return err
		}
		defer ng.stop()
	}
	cfg.logf("bench proxy: upstream %s, bare proxy %s, verifier %s (auth %s), %d keys", upstream.Addr, bare.Addr, va[0], va[1], cfg.Keys)
	bareRes, pooledRes, kmRes, durRes, ngAlone, ngAuth := proxyRounds(ctx, cfg, "http://"+bare.Addr+"/v1/items", "http://"+pooled.Addr+"/v1/items", "http://"+va[0]+"/v1/items", durableURL, ng, secrets)
	authRes := drive(ctx, "http://"+va[1]+"/v1/items", secrets, cfg.Connections, cfg.Duration)
	cfg.logf("bench proxy: forward auth %8.0f requests/s p99 %.2f ms", authRes.perSecond(), PercentileMS(authRes.lats, 0.99))
	proxySummary(cfg, proxyResults{bare: bareRes, pooled: pooledRes, km: kmRes, dur: durRes, auth: authRes, ngAlone: ngAlone, ngAuth: ngAuth, nginx: ng != nil}).Print(cfg.out())
	return nil
}

// proxyResults are the measurements of one RunProxy.
type proxyResults struct {
	bare, pooled, km, dur, auth, ngAlone, ngAuth loadResult
	nginx                                        bool
}

// proxySummary is RunProxy's name=value line.
func proxySummary(cfg ProxyConfig, r proxyResults) *Summary {
	bareRes, pooledRes, kmRes, durRes, authRes, ngAlone, ngAuth := r.bare, r.pooled, r.km, r.dur, r.auth, r.ngAlone, r.ngAuth
	s := &Summary{}
	s.Add("bench", "proxy")
	s.Add("backend", cfg.Backend)
	s.Add("connections", cfg.Connections)
	s.Add("requests_per_s", kmRes.perSecond())
	s.Add("bare_requests_per_s", bareRes.perSecond())
	s.Add("ratio", fmt.Sprintf("%.3f", kmRes.perSecond()/bareRes.perSecond()))
	s.Add("pooled_bare_requests_per_s", pooledRes.perSecond())
	s.Add("pooled_ratio", fmt.Sprintf("%.3f", kmRes.perSecond()/pooledRes.perSecond()))
	s.Add("p50_ms", fmt.Sprintf("%.2f", PercentileMS(kmRes.lats, 0.50)))
	s.Add("p99_ms", fmt.Sprintf("%.2f", PercentileMS(kmRes.lats, 0.99)))
	s.Add("bare_p99_ms", fmt.Sprintf("%.2f", PercentileMS(bareRes.lats, 0.99)))
	if cfg.DurableLog {
		s.Add("durable_requests_per_s", durRes.perSecond())
		s.Add("durable_ratio", fmt.Sprintf("%.3f", durRes.perSecond()/bareRes.perSecond()))
		s.Add("durable_vs_default", fmt.Sprintf("%.3f", durRes.perSecond()/kmRes.perSecond()))
		s.Add("durable_p50_ms", fmt.Sprintf("%.2f", PercentileMS(durRes.lats, 0.50)))
		s.Add("durable_p99_ms", fmt.Sprintf("%.2f", PercentileMS(durRes.lats, 0.99)))
	}
	s.Add("auth_requests_per_s", authRes.perSecond())
	s.Add("auth_p99_ms", fmt.Sprintf("%.2f", PercentileMS(authRes.lats, 0.99)))
	// CPU per request of the whole process: load generator, upstream and
	// the proxy under test share it, so the difference to the bare proxy
	// is the verifier's own cost (verification, rate limit, event).
	s.Add("cpu_ns_per_request", fmt.Sprintf("%.0f", kmRes.cpuPerRequest()))
	s.Add("bare_cpu_ns_per_request", fmt.Sprintf("%.0f", bareRes.cpuPerRequest()))
	s.Add("verifier_cpu_ns_per_request", fmt.Sprintf("%.0f", kmRes.cpuPerRequest()-bareRes.cpuPerRequest()))
	// Against the bare proxy with the same copy-buffer pool: the cost of
	// verification, rate limiting and the usage event alone.
	s.Add("pooled_bare_cpu_ns_per_request", fmt.Sprintf("%.0f", pooledRes.cpuPerRequest()))
	s.Add("verifier_vs_pooled_cpu_ns_per_request", fmt.Sprintf("%.0f", kmRes.cpuPerRequest()-pooledRes.cpuPerRequest()))
	s.Add("auth_cpu_ns_per_request", fmt.Sprintf("%.0f", authRes.cpuPerRequest()))
	if r.nginx {
		s.Add("nginx_requests_per_s", ngAlone.perSecond())
		s.Add("nginx_auth_requests_per_s", ngAuth.perSecond())
		s.Add("nginx_auth_ratio", fmt.Sprintf("%.3f", ngAuth.perSecond()/ngAlone.perSecond()))
		s.Add("proxy_vs_nginx", fmt.Sprintf("%.3f", kmRes.perSecond()/ngAlone.perSecond()))
		s.Add("nginx_p99_ms", fmt.Sprintf("%.2f", PercentileMS(ngAlone.lats, 0.99)))
		s.Add("nginx_auth_p99_ms", fmt.Sprintf("%.2f", PercentileMS(ngAuth.lats, 0.99)))
		// This process's CPU (load generator and the forward-auth verifier;
		// nginx's workers are other processes) per request through nginx.
		s.Add("nginx_auth_process_cpu_ns_per_request", fmt.Sprintf("%.0f", ngAuth.cpuPerRequest()))
		s.Add("nginx_process_cpu_ns_per_request", fmt.Sprintf("%.0f", ngAlone.cpuPerRequest()))
		// Their difference is keymeter's forward-auth cost per request.
		s.Add("nginx_keymeter_auth_cpu_ns_per_request", fmt.Sprintf("%.0f", ngAuth.cpuPerRequest()-ngAlone.cpuPerRequest()))
	}
	s.Add("errors", kmRes.errors+bareRes.errors+pooledRes.errors+authRes.errors+durRes.errors+ngAlone.errors+ngAuth.errors)
	s.Add("rss_mb", proc.RSSMB())
	return s
}

// proxyRounds alternates bare, pooled bare, verifier and (when durableURL
// is set) durable-log verifier measurements.
func proxyRounds(ctx context.Context, cfg ProxyConfig, bareURL, pooledURL, kmURL, durableURL string, ng *nginxBench, secrets []string) (bareRes, pooledRes, kmRes, durRes, ngAlone, ngAuth loadResult) {
	for r := 0; r < cfg.Rounds; r++ {
		res := drive(ctx, bareURL, nil, cfg.Connections, cfg.Duration)
		cfg.logf("bench proxy: round %d bare     %8.0f requests/s p99 %.2f ms", r+1, res.perSecond(), PercentileMS(res.lats, 0.99))
		bareRes.add(res)
		res = drive(ctx, pooledURL, nil, cfg.Connections, cfg.Duration)
		cfg.logf("bench proxy: round %d pooled   %8.0f requests/s p99 %.2f ms", r+1, res.perSecond(), PercentileMS(res.lats, 0.99))
		pooledRes.add(res)
		stop := func() {}
		if cfg.CPUProfile != "" && r == 0 {
			stop = startCPUProfile(cfg.CPUProfile, cfg.logf)
		}
		res = drive(ctx, kmURL, secrets, cfg.Connections, cfg.Duration)
		stop()
		cfg.logf("bench proxy: round %d keymeter %8.0f requests/s p99 %.2f ms", r+1, res.perSecond(), PercentileMS(res.lats, 0.99))
		kmRes.add(res)
		if durableURL != "" {
			res = drive(ctx, durableURL, secrets, cfg.Connections, cfg.Duration)
			cfg.logf("bench proxy: round %d durable  %8.0f requests/s p99 %.2f ms", r+1, res.perSecond(), PercentileMS(res.lats, 0.99))
			durRes.add(res)
		}
		if ng != nil {
			res = drive(ctx, ng.aloneURL, secrets, cfg.Connections, cfg.Duration)
			cfg.logf("bench proxy: round %d nginx    %8.0f requests/s p99 %.2f ms", r+1, res.perSecond(), PercentileMS(res.lats, 0.99))
			ngAlone.add(res)
			res = drive(ctx, ng.authURL, secrets, cfg.Connections, cfg.Duration)
			cfg.logf("bench proxy: round %d nginx+km %8.0f requests/s p99 %.2f ms", r+1, res.perSecond(), PercentileMS(res.lats, 0.99))
			ngAuth.add(res)
		}
	}
	return bareRes, pooledRes, kmRes, durRes, ngAlone, ngAuth
}

// startBenchVerifier runs the verifier in proxy mode with its forward-auth
// endpoint and returns their addresses once the key secret verifies.
func startBenchVerifier(ctx context.Context, cfg ProxyConfig, upstream, secret string, durable bool) ([2]string, func(), error) {
	vctx, stopV := context.WithCancel(context.Background())
	dir, id := cfg.DataDir, "bench-proxy"
	if durable {
		dir, id = filepath.Join(cfg.DataDir, "durable"), "bench-proxy-durable"
	}
	addrs := make(chan [2]string, 1)
	verr := make(chan error, 1)
	go func() {
		verr <- verifier.Run(vctx, verifier.RunConfig{
			Listen: "127.0.0.1:0", AuthListen: "127.0.0.1:0", Upstream: upstream, HTTP: verifier.HTTPConfig{Front: verifier.Fronts["envoy"]},
			DataDir: dir, VerifierID: id, Bus: cfg.Bus, Logger: cfg.Logger, Emitter: verifier.EmitterConfig{DurableLog: durable},
			OnListen: func(m, a, _ net.Addr) { addrs <- [2]string{m.String(), a.String()} },
		})
	}()
	var va [2]string
	select {
	case va = <-addrs:
	case err := <-verr:
		stopV()
		return va, nil, err
	}
	stop := func() { stopV(); <-verr }
	// Ready once the last key written verifies.
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(rctx, "GET", "http://"+va[1]+"/", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return va, stop, nil
			}
		}
		if err := ctxtime.Sleep(rctx, 10*time.Millisecond); err != nil {
			stop()
			return va, nil, fmt.Errorf("verifier not ready after a minute: %w", err)
		}
	}
}

type loopbackServer struct {
	*http.Server
	Addr string
}

func serveLoopback(h http.Handler) (*loopbackServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &loopbackServer{Server: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, Addr: ln.Addr().String()}
	go func() { _ = s.Serve(ln) }()
	return s, nil
}

type loadResult struct {
	n, errors int
	elapsed   time.Duration
	cpu       time.Duration // process CPU (load generator included) while driving
	lats      []time.Duration
}

// cpuPerRequest is the process's CPU-ns per successful request.
func (r *loadResult) cpuPerRequest() float64 {
	if r.n == 0 {
		return 0
	}
	return float64(r.cpu.Nanoseconds()) / float64(r.n)
}

func (r *loadResult) add(o loadResult) {
	r.cpu += o.cpu
	r.n += o.n
	r.errors += o.errors
	r.elapsed += o.elapsed
	r.lats = append(r.lats, o.lats...)
}

func (r *loadResult) perSecond() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.n) / r.elapsed.Seconds()
}

// drive sends GETs to u from conns keep-alive clients for d, with the keys
// round-robin (none when keys is empty); non-200 answers count as errors.
// Each client sends at least one request: on a loaded machine a client
// goroutine may first run after a short d has passed, and a run that
// measured nothing would report a rate of 0.
func drive(ctx context.Context, u string, secrets []string, conns int, d time.Duration) loadResult {
	tr := &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	results := make([]loadResult, conns)
	var wg sync.WaitGroup
	cpu0 := proc.CPU()
	start := time.Now()
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			driveOne(ctx, client, u, secrets, w, conns, &results[w])
		}()
	}
	wg.Wait()
	var total loadResult
	for _, r := range results {
		total.add(r)
	}
	total.elapsed = time.Since(start)
	total.cpu = proc.CPU() - cpu0
	return total
}

func driveOne(ctx context.Context, client *http.Client, u string, secrets []string, w, conns int, res *loadResult) {
	res.lats = make([]time.Duration, 0, 1<<14)
	req, _ := http.NewRequest("GET", u, nil)
	for i := w; i == w || ctx.Err() == nil; i += conns {
		if len(secrets) > 0 {
			req.Header.Set("Authorization", "Bearer "+secrets[i%len(secrets)])
		}
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				res.errors++
			}
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			res.errors++
			continue
		}
		res.n++
		res.lats = append(res.lats, time.Since(t0))
	}
}

// startCPUProfile starts a CPU profile into path; stop ends it and closes
// the file. A profile that cannot start is logged, not fatal.
func startCPUProfile(path string, logf func(string, ...any)) (stop func()) {
	f, err := os.Create(path)
	if err == nil {
		if err = pprof.StartCPUProfile(f); err != nil {
			f.Close()
		}
	}
	if err != nil {
		logf("bench proxy: cpu profile: %v", err)
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}
