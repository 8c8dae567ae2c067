package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/verifier"
)

func init() { register(newVerifierCmd) }

func newVerifierCmd(g *globals) *cobra.Command {
	var (
		bf         busFlags
		cfg        verifier.RunConfig
		routes     []string
		trusted    []string
		duration   time.Duration
		maxSpoolMB int64
		queue      int
		maxBatch   int
		flushEvery time.Duration
		memLimitMB int64
		geoCountry string
		geoASN     string
		front      string
		frontHdr   [3]string // method, URI, host
	)
	c := &cobra.Command{
		Use:   "verifier",
		Short: "Verify API keys at the edge: reverse proxy or forward-auth endpoint, metering every request",
		Long: `The verifier loads the whole key table from the bus's key-state log, follows
its changes live, and decides on every request from memory. With --upstream it
is a reverse proxy; without, --listen answers forward-auth subrequests (nginx
auth_request, Envoy ext_authz HTTP, Traefik/Caddy forward auth; see
deploy/proxy/): --front names that proxy, and the original method, URI and
host are then read only from the headers it sets (nginx: X-Original-Method,
X-Original-URI, X-Original-Host; traefik and caddy: X-Forwarded-Method,
X-Forwarded-Uri, X-Forwarded-Host; envoy: the check request itself).

The client address is the rightmost address of X-Forwarded-For (or
Forwarded, with --forwarded-header Forwarded) that is not in --trusted-proxy,
walking from the peer; X-Real-Ip is never read. Every listener defaults to
loopback. Every request becomes a usage event on the bus; while the bus
is unreachable events are spooled under --data-dir and replayed later.

Admin endpoints on --admin-listen: /metrics (Prometheus), /healthz, /readyz
(ready once the key table is loaded).`,
		Example: `  keymeter verifier --upstream http://127.0.0.1:9000 --listen :8080
  keymeter verifier --listen 127.0.0.1:8081 --front nginx --route /public,anonymous=5/10 --route /admin,scope=admin
  keymeter verifier --bus nats --nats-url nats://nats:4222 --upstream http://api:9000 --data-dir /var/lib/keymeter`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			log := g.Logger()
			var err error
			if cfg.Routes, err = verifier.ParseRoutes(routes); err != nil {
				return fmt.Errorf("--route: %w", err)
			}
			if (cfg.Listen != "" && cfg.Upstream == "") || cfg.AuthListen != "" || front != "" || frontHdr != [3]string{} {
				if cfg.HTTP.Front, err = verifier.ParseFront(front, frontHdr[0], frontHdr[1], frontHdr[2]); err != nil {
					return err
				}
			}
			for _, s := range trusted {
				p, err := keys.ParseCIDR(s)
				if err != nil {
					return fmt.Errorf("--trusted-proxy: %w", err)
				}
				cfg.HTTP.TrustedProxies = append(cfg.HTTP.TrustedProxies, p)
			}
			cfg.Emitter.MaxSpoolBytes = maxSpoolMB << 20
			cfg.Emitter.QueueSize, cfg.Emitter.MaxBatch, cfg.Emitter.FlushInterval = queue, maxBatch, flushEvery
			if memLimitMB > 0 {
				setMemoryLimit(memLimitMB << 20)
			}
			if geoCountry != "" || geoASN != "" {
				geo, err := verifier.OpenGeo(geoCountry, geoASN)
				if err != nil {
					return err
				}
				defer geo.Close()
				cfg.HTTP.Geo = geo
			}
			if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
				return fmt.Errorf("--data-dir: %w", err)
			}
			b, err := bf.open(ctx, cfg.DataDir, log)
			if err != nil {
				return err
			}
			cfg.Bus, cfg.Logger = b, log
			runErr := verifier.Run(ctx, cfg)
			// Shutdown order: Run stopped intake and flushed the batches;
			// now drain and close the bus.
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := b.Close(cctx); err != nil && runErr == nil {
				runErr = err
			}
			return runErr
		},
	}
	f := c.Flags()
	bf.add(f)
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:8080", "address of the reverse proxy (with --upstream) or of the forward-auth endpoint (:8080 for every interface)")
	f.StringVar(&cfg.Upstream, "upstream", "", "upstream API URL; empty: --listen serves forward auth only")
	f.StringVar(&cfg.AuthListen, "auth-listen", "", "additional forward-auth address while proxying")
	f.StringVar(&cfg.AdminListen, "admin-listen", "127.0.0.1:9464", "address of /metrics, /healthz, /readyz (empty to disable)")
	f.StringVar(&front, "front", "", "the proxy calling the forward-auth endpoint: "+strings.Join(verifier.FrontNames(), ", ")+" (required for forward auth unless the --front-*-header flags name the headers)")
	f.StringVar(&frontHdr[0], "front-method-header", "", "header carrying the original method (replaces the --front's)")
	f.StringVar(&frontHdr[1], "front-uri-header", "", "header carrying the original request URI (replaces the --front's)")
	f.StringVar(&frontHdr[2], "front-host-header", "", "header carrying the original host (replaces the --front's)")
	f.StringVar(&cfg.HTTP.ForwardedHeader, "forwarded-header", verifier.HeaderXForwardedFor, "header the client address is read from when the peer is a trusted proxy: X-Forwarded-For or Forwarded (RFC 7239)")
	f.DurationVar(&cfg.HTTP.BodyTimeout, "body-timeout", verifier.DefaultBodyTimeout, "longest an allowed request's body may take to arrive (refusals never read it)")
	f.StringVar(&cfg.DataDir, "data-dir", "data", "where state lives: event spool, embedded NATS store")
	f.DurationVar(&duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	f.StringVar(&cfg.VerifierID, "verifier-id", "", "this verifier's id in events (default verifier-<hostname>); unique per instance")
	f.StringArrayVar(&routes, "route", nil, "route rule PREFIX[,scope=S][,anonymous=RATE[/BURST]][,cost=N]; repeatable; longest prefix wins")
	f.StringVar(&cfg.HTTP.QueryParam, "query-param", "", "query parameter that may carry the key (removed before forwarding); empty: headers only")
	f.StringSliceVar(&trusted, "trusted-proxy", []string{"127.0.0.0/8", "::1/128"}, "CIDRs of the proxies whose --forwarded-header is believed (forward-auth callers, load balancers; never client networks)")
	f.StringVar(&cfg.HTTP.CountryHeader, "country-header", "", "CDN header with the client's country, e.g. CF-IPCountry")
	f.StringVar(&cfg.HTTP.ASNHeader, "asn-header", "", "header with the client's AS number (\"AS3320\" or \"3320\"), set by a CDN or edge worker")
	f.Int64Var(&maxSpoolMB, "max-spool-mb", 1024, "bound of the on-disk event spool; beyond it events are dropped and counted")
	f.IntVar(&queue, "event-queue", 1<<16, "events waiting to be batched; beyond it events are dropped and counted")
	f.DurationVar(&cfg.ShareRateLimits, "share-rate-limits", 0, "make key rate limits global across the verifiers on this NATS bus, reporting admissions this often (e.g. 50ms; approximate, converging); 0: per-verifier limits")
	f.BoolVar(&cfg.Emitter.DurableLog, "durable-log", false, "answer a request only once its event is fsynced in a local log under --data-dir (group commit), replayed after a crash: a SIGKILL or power loss loses no answered request's event (costs throughput; see README)")
	f.IntVar(&maxBatch, "max-batch", 1000, "events per batch")
	f.DurationVar(&flushEvery, "flush-interval", 50*time.Millisecond, "longest an event waits for its batch")
	f.StringVar(&geoCountry, "geoip-country-db", "", "MaxMind-format Country or City database (.mmdb) for the events' country")
	f.StringVar(&geoASN, "geoip-asn-db", "", "MaxMind-format ASN database (.mmdb) for the events' AS number")
	f.StringVar(&cfg.QuotaPeriod, "quota-period", "month", "quota period, as the aggregator's: month or day (UTC)")
	f.Int64Var(&memLimitMB, "memory-limit-mb", 0, "soft memory limit for the Go runtime (GOMEMLIMIT); 0: unset")
	return c
}

func setMemoryLimit(bytes int64) { debug.SetMemoryLimit(bytes) }

func init() {
	registerBench(newBenchRevocationCmd)
	registerBench(newBenchProxyCmd)
}

// openAnother opens one more connection to the bus first is on (each
// verifier of a benchmark has its own connection, as separate processes
// would).
func openAnother(ctx context.Context, bf *busFlags, first bus.Bus, log *slog.Logger) (bus.Bus, error) {
	if nb, ok := first.(*natsbus.Bus); ok && nb.Embedded() != nil {
		return natsbus.New(ctx, natsbus.Config{Prefix: bf.Prefix, Partitions: bf.Partitions, MaxPending: bf.MaxPending},
			natsbus.WithLogger(log), natsbus.WithEmbedded(nb.Embedded()))
	}
	return bf.open(ctx, "", log)
}

func benchDataDir(dataDir *string, keep bool, name string) (func(), error) {
	if *dataDir != "" {
		return func() {}, nil
	}
	d, err := os.MkdirTemp("", "keymeter-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	*dataDir = d
	if keep {
		return func() {}, nil
	}
	return func() { os.RemoveAll(d) }, nil
}

// putKeys writes n active keys straight to the key-state log, concurrently,
// and returns their secrets and states.
func putKeys(ctx context.Context, kl bus.KeyLog, n int, project string, ratePerS float64) ([]string, []*keymeterv1.KeyState, error) {
	secrets := make([]string, n)
	states := make([]*keymeterv1.KeyState, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(64)
	for i := range n {
		g.Go(func() error {
			sec, err := keys.Generate(keys.EnvLive)
			if err != nil {
				return err
			}
			id, err := keys.NewID()
			if err != nil {
				return err
			}
			h := sec.Hash()
			st := &keymeterv1.KeyState{Id: id, Project: project, Env: "live", Hash: h[:], DisplayPrefix: sec.Display(),
				Status: keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, RateLimitPerS: ratePerS, Version: 1,
				CreatedUnixNano: time.Now().UnixNano(), UpdatedUnixNano: time.Now().UnixNano()}
			b, err := proto.Marshal(st)
			if err != nil {
				return err
			}
			secrets[i], states[i] = sec.Reveal(), st
			return kl.PutKey(gctx, id, b)
		})
	}
	return secrets, states, g.Wait()
}

func newBenchRevocationCmd(g *globals) *cobra.Command {
	var (
		bf          busFlags
		verifiers   int
		nkeys       int
		revocations int
		dataDir     string
		keep        bool
	)
	c := &cobra.Command{
		Use:   "revocation",
		Short: "Time from a revocation to the last verifier refusing the key: p50, p99",
		Long: `Starts --verifiers key tables (each on its own bus connection, as separate
verifier processes would be), loads --keys keys, then revokes --revocations
random keys one after the other through keys.Service and measures, for each,
the time until every verifier refuses the key. p50_ms/p99_ms are measured
from the start of the revoke call; *_from_return_ms from its return (the
service returns once its own watch has seen the write, so those are near 0).`,
		Example: `  keymeter bench revocation --bus nats --verifiers 3 --keys 100000
  keymeter bench revocation --bus kafka --kafka-brokers 127.0.0.1:19092 --verifiers 3 --keys 100000`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := g.Logger()
			if verifiers < 1 || nkeys < 1 || revocations < 1 || revocations > nkeys {
				return fmt.Errorf("need --verifiers ≥ 1, --keys ≥ 1 and 1 ≤ --revocations ≤ --keys")
			}
			cleanup, err := benchDataDir(&dataDir, keep, "revocation")
			if err != nil {
				return err
			}
			defer cleanup()
			bf.Prefix = fmt.Sprintf("benchrev%d", time.Now().UnixNano()%1_000_000_000)
			admin, err := bf.open(ctx, dataDir, log)
			if err != nil {
				return err
			}
			var buses []bus.Bus
			defer func() {
				cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				for _, b := range buses {
					_ = b.Close(cctx)
				}
				_ = admin.Close(cctx)
			}()
			fmt.Fprintf(os.Stderr, "bench revocation: backend=%s writing %d keys\n", bf.Backend, nkeys)
			start := time.Now()
			secrets, states, err := putKeys(ctx, admin, nkeys, "proj_bench", 0)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "bench revocation: %d keys written in %s; starting %d verifiers\n", nkeys, time.Since(start).Round(time.Millisecond), verifiers)

			rctx, stop := context.WithCancel(ctx)
			defer stop()
			var tables []*keys.Table
			var vs []*verifier.Verifier
			var wg sync.WaitGroup
			defer wg.Wait()
			defer stop()
			for i := 0; i <= verifiers; i++ { // the last table is the service's
				b, err := openAnother(ctx, &bf, admin, log)
				if err != nil {
					return err
				}
				buses = append(buses, b)
				tbl := keys.NewTable(keys.TableConfig{KeepState: i == verifiers, Logger: log})
				wg.Add(1)
				go func() { defer wg.Done(); _ = tbl.Run(rctx, b) }()
				tables = append(tables, tbl)
				if i < verifiers {
					v, err := verifier.New(verifier.Config{Table: tbl})
					if err != nil {
						return err
					}
					vs = append(vs, v)
				}
			}
			load := time.Now()
			for _, tbl := range tables {
				select {
				case <-tbl.Ready():
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			for _, tbl := range tables {
				for tbl.Len() < nkeys { // a snapshot may predate the last puts
					time.Sleep(time.Millisecond)
				}
			}
			fmt.Fprintf(os.Stderr, "bench revocation: %d tables loaded in %s\n", len(tables), time.Since(load).Round(time.Millisecond))
			svc, err := keys.NewService(keys.ServiceConfig{KeyLog: admin, Table: tables[verifiers]})
			if err != nil {
				return err
			}
			ip := netip.MustParseAddr("203.0.113.9")
			fromStart := make([]time.Duration, 0, revocations)
			fromReturn := make([]time.Duration, 0, revocations)
			p := progress{name: "bench revocation", every: time.Second}
			for i, j := range rand.Perm(nkeys)[:revocations] {
				st := states[j]
				t0 := time.Now()
				if err := svc.Revoke(ctx, st.GetId(), "bench"); err != nil {
					return err
				}
				t1 := time.Now()
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				for k, tbl := range tables[:verifiers] {
					if err := tbl.WaitVersion(wctx, st.GetId(), st.GetVersion()+1); err != nil {
						cancel()
						return fmt.Errorf("verifier %d never saw revocation %d: %w", k, i, err)
					}
					if d := vs[k].Verify(&verifier.Request{Key: secrets[j], ClientIP: ip, Path: "/"}); d.Outcome != event.OutcomeRevoked {
						cancel()
						return fmt.Errorf("verifier %d: revoked key got %s", k, d.Outcome)
					}
				}
				cancel()
				t2 := time.Now()
				fromStart = append(fromStart, t2.Sub(t0))
				fromReturn = append(fromReturn, t2.Sub(t1))
				p.tick(ctx, "%d/%d revocations", i+1, revocations)
			}
			var s summary
			s.add("bench", "revocation")
			s.add("backend", bf.Backend)
			s.add("verifiers", verifiers)
			s.add("keys", nkeys)
			s.add("revocations", revocations)
			s.add("p50_ms", fmt.Sprintf("%.3f", percentileMS(fromStart, 0.50)))
			s.add("p99_ms", fmt.Sprintf("%.3f", percentileMS(fromStart, 0.99)))
			s.add("p50_from_return_ms", fmt.Sprintf("%.3f", percentileMS(fromReturn, 0.50)))
			s.add("p99_from_return_ms", fmt.Sprintf("%.3f", percentileMS(fromReturn, 0.99)))
			s.add("rss_mb", rssMB())
			s.print()
			return nil
		},
	}
	bf.add(c.Flags())
	c.Flags().IntVar(&verifiers, "verifiers", 3, "verifier key tables, each on its own bus connection")
	c.Flags().IntVar(&nkeys, "keys", 100_000, "keys in the table")
	c.Flags().IntVar(&revocations, "revocations", 200, "revocations to time")
	c.Flags().StringVar(&dataDir, "data-dir", "", "where the embedded server keeps its store (default: a temporary directory)")
	c.Flags().BoolVar(&keep, "keep", false, "keep the temporary data directory")
	return c
}

func newBenchProxyCmd(g *globals) *cobra.Command {
	var (
		bf          busFlags
		conns       int
		duration    time.Duration
		rounds      int
		nkeys       int
		dataDir     string
		keep        bool
		profilePath string
		durableLog  bool
	)
	c := &cobra.Command{
		Use:   "proxy",
		Short: "Proxy overhead: the same upstream through a bare httputil.ReverseProxy and through the verifier; forward-auth requests/s",
		Long: `Starts a local upstream, a bare httputil.ReverseProxy in front of it, and the
keymeter verifier in proxy mode (with its forward-auth endpoint), on the bus
given. Drives each with --connections concurrent keep-alive clients for
--duration, --rounds times, alternating, with valid keys round-robin; then the
forward-auth endpoint alone. requests_per_s is the verifier's, ratio its share
of the bare proxy's. Load generator and servers share this machine's cores.`,
		Example: `  keymeter bench proxy --connections 64 --duration 5s
  # the same with wrk (Debian's wrk), against a running verifier:
  #   wrk -t2 -c64 -d10s -H 'Authorization: Bearer km_live_…' http://127.0.0.1:8080/`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := g.Logger()
			cleanup, err := benchDataDir(&dataDir, keep, "proxy")
			if err != nil {
				return err
			}
			defer cleanup()
			var cpuProfile *os.File
			if profilePath != "" {
				if cpuProfile, err = os.Create(profilePath); err != nil {
					return err
				}
				defer cpuProfile.Close()
			}
			bf.Prefix = fmt.Sprintf("benchproxy%d", time.Now().UnixNano()%1_000_000_000)
			b, err := bf.open(ctx, dataDir, log)
			if err != nil {
				return err
			}
			defer func() {
				cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = b.Close(cctx)
			}()
			secrets, _, err := putKeys(ctx, b, nkeys, "proj_bench", 0)
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

			// startV runs a verifier (with the durable event log or not)
			// and returns its proxy and forward-auth addresses once every key
			// verifies.
			startV := func(durable bool) (va [2]string, stop func(), err error) {
				vctx, stopV := context.WithCancel(context.Background())
				addrs := make(chan [2]string, 1)
				verr := make(chan error, 1)
				dir, id := dataDir, "bench-proxy"
				if durable {
					dir, id = filepath.Join(dataDir, "durable"), "bench-proxy-durable"
				}
				go func() {
					verr <- verifier.Run(vctx, verifier.RunConfig{
						Listen: "127.0.0.1:0", AuthListen: "127.0.0.1:0", Upstream: uu.String(), HTTP: verifier.HTTPConfig{Front: verifier.Fronts["envoy"]},
						DataDir: dir, VerifierID: id, Bus: b, Logger: log, Emitter: verifier.EmitterConfig{DurableLog: durable},
						OnListen: func(m, a, _ net.Addr) { addrs <- [2]string{m.String(), a.String()} },
					})
				}()
				select {
				case va = <-addrs:
				case err := <-verr:
					stopV()
					return va, nil, err
				}
				stop = func() { stopV(); <-verr }
				deadline := time.Now().Add(60 * time.Second)
				for {
					req, _ := http.NewRequest("GET", "http://"+va[1]+"/", nil)
					req.Header.Set("Authorization", "Bearer "+secrets[len(secrets)-1])
					resp, err := http.DefaultClient.Do(req)
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode == 200 {
							return va, stop, nil
						}
					}
					if time.Now().After(deadline) {
						stop()
						return va, nil, fmt.Errorf("verifier not ready after 60s")
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			va, stopV, err := startV(false)
			if err != nil {
				return err
			}
			defer stopV()
			var vd [2]string
			if durableLog {
				var stopD func()
				if vd, stopD, err = startV(true); err != nil {
					return err
				}
				defer stopD()
			}
			fmt.Fprintf(os.Stderr, "bench proxy: upstream %s, bare proxy %s, verifier %s (auth %s), %d keys\n", upstream.Addr, bare.Addr, va[0], va[1], nkeys)
			var bareRes, kmRes, durRes, authRes loadResult
			for r := 0; r < rounds; r++ {
				res := drive(ctx, "http://"+bare.Addr+"/v1/items", nil, conns, duration)
				fmt.Fprintf(os.Stderr, "bench proxy: round %d bare     %8.0f requests/s p99 %.2f ms\n", r+1, res.perSecond(), percentileMS(res.lats, 0.99))
				bareRes.add(res)
				if cpuProfile != nil && r == 0 {
					_ = pprof.StartCPUProfile(cpuProfile)
				}
				res = drive(ctx, "http://"+va[0]+"/v1/items", secrets, conns, duration)
				if cpuProfile != nil && r == 0 {
					pprof.StopCPUProfile()
				}
				fmt.Fprintf(os.Stderr, "bench proxy: round %d keymeter %8.0f requests/s p99 %.2f ms\n", r+1, res.perSecond(), percentileMS(res.lats, 0.99))
				kmRes.add(res)
				if durableLog {
					res = drive(ctx, "http://"+vd[0]+"/v1/items", secrets, conns, duration)
					fmt.Fprintf(os.Stderr, "bench proxy: round %d durable  %8.0f requests/s p99 %.2f ms\n", r+1, res.perSecond(), percentileMS(res.lats, 0.99))
					durRes.add(res)
				}
			}
			authRes = drive(ctx, "http://"+va[1]+"/v1/items", secrets, conns, duration)
			fmt.Fprintf(os.Stderr, "bench proxy: forward auth %8.0f requests/s p99 %.2f ms\n", authRes.perSecond(), percentileMS(authRes.lats, 0.99))
			var s summary
			s.add("bench", "proxy")
			s.add("backend", bf.Backend)
			s.add("connections", conns)
			s.add("requests_per_s", kmRes.perSecond())
			s.add("bare_requests_per_s", bareRes.perSecond())
			s.add("ratio", fmt.Sprintf("%.3f", kmRes.perSecond()/bareRes.perSecond()))
			s.add("p50_ms", fmt.Sprintf("%.2f", percentileMS(kmRes.lats, 0.50)))
			s.add("p99_ms", fmt.Sprintf("%.2f", percentileMS(kmRes.lats, 0.99)))
			s.add("bare_p99_ms", fmt.Sprintf("%.2f", percentileMS(bareRes.lats, 0.99)))
			if durableLog {
				s.add("durable_requests_per_s", durRes.perSecond())
				s.add("durable_ratio", fmt.Sprintf("%.3f", durRes.perSecond()/bareRes.perSecond()))
				s.add("durable_vs_default", fmt.Sprintf("%.3f", durRes.perSecond()/kmRes.perSecond()))
				s.add("durable_p50_ms", fmt.Sprintf("%.2f", percentileMS(durRes.lats, 0.50)))
				s.add("durable_p99_ms", fmt.Sprintf("%.2f", percentileMS(durRes.lats, 0.99)))
			}
			s.add("auth_requests_per_s", authRes.perSecond())
			s.add("auth_p99_ms", fmt.Sprintf("%.2f", percentileMS(authRes.lats, 0.99)))
			s.add("errors", kmRes.errors+bareRes.errors+authRes.errors+durRes.errors)
			s.add("rss_mb", rssMB())
			s.print()
			return nil
		},
	}
	bf.add(c.Flags())
	c.Flags().IntVar(&conns, "connections", 64, "concurrent keep-alive connections")
	c.Flags().DurationVar(&duration, "duration", 5*time.Second, "length of each measurement")
	c.Flags().IntVar(&rounds, "rounds", 2, "alternating bare/keymeter rounds")
	c.Flags().IntVar(&nkeys, "keys", 10_000, "keys in the table (requests use them round-robin)")
	c.Flags().StringVar(&profilePath, "cpuprofile", "", "write a CPU profile of the first keymeter round to this file")
	c.Flags().StringVar(&dataDir, "data-dir", "", "where the embedded server and the spool live (default: a temporary directory)")
	c.Flags().BoolVar(&keep, "keep", false, "keep the temporary data directory")
	c.Flags().BoolVar(&durableLog, "durable-log", false, "also measure a verifier with --durable-log, alternating with the others (durable_* figures)")
	return c
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
	lats      []time.Duration
}

func (r *loadResult) add(o loadResult) {
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
func drive(ctx context.Context, u string, secrets []string, conns int, d time.Duration) loadResult {
	tr := &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	results := make([]loadResult, conns)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := &results[w]
			res.lats = make([]time.Duration, 0, 1<<14)
			req, _ := http.NewRequest("GET", u, nil)
			for i := w; ctx.Err() == nil; i += conns {
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
		}()
	}
	wg.Wait()
	var total loadResult
	for _, r := range results {
		total.add(r)
	}
	total.elapsed = time.Since(start)
	return total
}
