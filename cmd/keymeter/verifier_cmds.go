package main

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/busopen"
	"github.com/keymeter/keymeter/internal/verifier"
)

func init() { register(newVerifierCmd) }

// verifierFlags are the verifier's flags.
type verifierFlags struct {
	bf       busFlags
	cfg      verifier.RunConfig
	set      verifier.Settings
	duration time.Duration
}

func newVerifierCmd(g *globals) *cobra.Command {
	vf := &verifierFlags{}
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
			ctx, cancel := withDuration(cmd.Context(), vf.duration)
			defer cancel()
			return runVerifier(ctx, vf, g.Logger())
		},
	}
	vf.add(c.Flags())
	return c
}

func (vf *verifierFlags) add(f *pflag.FlagSet) {
	vf.bf.add(f)
	f.StringVar(&vf.cfg.Listen, "listen", "127.0.0.1:8080", "address of the reverse proxy (with --upstream) or of the forward-auth endpoint (:8080 for every interface)")
	f.StringVar(&vf.cfg.Upstream, "upstream", "", "upstream API URL; empty: --listen serves forward auth only")
	f.StringVar(&vf.cfg.AuthListen, "auth-listen", "", "additional forward-auth address while proxying")
	f.StringVar(&vf.cfg.AdminListen, "admin-listen", "127.0.0.1:9464", "address of /metrics, /healthz, /readyz (empty to disable)")
	f.StringVar(&vf.set.Front, "front", "", "the proxy calling the forward-auth endpoint: "+strings.Join(verifier.FrontNames(), ", ")+" (required for forward auth unless the --front-*-header flags name the headers)")
	f.StringVar(&vf.set.FrontHeaders[0], "front-method-header", "", "header carrying the original method (replaces the --front's)")
	f.StringVar(&vf.set.FrontHeaders[1], "front-uri-header", "", "header carrying the original request URI (replaces the --front's)")
	f.StringVar(&vf.set.FrontHeaders[2], "front-host-header", "", "header carrying the original host (replaces the --front's)")
	f.StringVar(&vf.cfg.HTTP.ForwardedHeader, "forwarded-header", verifier.HeaderXForwardedFor, "header the client address is read from when the peer is a trusted proxy: X-Forwarded-For or Forwarded (RFC 7239)")
	f.DurationVar(&vf.cfg.HTTP.BodyTimeout, "body-timeout", verifier.DefaultBodyTimeout, "longest an allowed request's body may take to arrive (refusals never read it)")
	f.StringVar(&vf.cfg.DataDir, "data-dir", "data", "where state lives: event spool, embedded NATS store")
	f.DurationVar(&vf.duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	f.StringVar(&vf.cfg.VerifierID, "verifier-id", "", "this verifier's id in events (default verifier-<hostname>); unique per instance")
	f.StringArrayVar(&vf.set.Routes, "route", nil, "route rule PREFIX[,scope=S][,anonymous=RATE[/BURST]][,cost=N]; repeatable; longest prefix wins")
	f.StringVar(&vf.cfg.HTTP.QueryParam, "query-param", "", "query parameter that may carry the key, proxy mode only (removed before forwarding; refused with forward auth, which cannot strip it); empty: headers only")
	f.StringSliceVar(&vf.set.TrustedProxies, "trusted-proxy", []string{"127.0.0.0/8", "::1/128"}, "CIDRs of the proxies whose --forwarded-header is believed (forward-auth callers, load balancers; never client networks)")
	f.StringVar(&vf.cfg.HTTP.CountryHeader, "country-header", "", "CDN header with the client's country, e.g. CF-IPCountry")
	f.StringVar(&vf.cfg.HTTP.ASNHeader, "asn-header", "", "header with the client's AS number (\"AS3320\" or \"3320\"), set by a CDN or edge worker")
	f.Int64Var(&vf.set.MaxSpoolMB, "max-spool-mb", 1024, "bound of the on-disk event spool; beyond it events are dropped and counted")
	f.IntVar(&vf.set.QueueSize, "event-queue", 1<<16, "events waiting to be batched; beyond it events are dropped and counted")
	f.DurationVar(&vf.cfg.ShareRateLimits, "share-rate-limits", 0, "make key rate limits global across the verifiers on this NATS bus, reporting admissions this often (e.g. 50ms; approximate, converging); 0: per-verifier limits")
	f.BoolVar(&vf.cfg.Emitter.DurableLog, "durable-log", false, "answer a request only once its event is fsynced in a local log under --data-dir (group commit), replayed after a crash: a SIGKILL or power loss loses no answered request's event (costs throughput; see README)")
	f.IntVar(&vf.set.MaxBatch, "max-batch", 1000, "events per batch")
	f.DurationVar(&vf.set.FlushInterval, "flush-interval", 50*time.Millisecond, "longest an event waits for its batch")
	f.StringVar(&vf.set.GeoCountryDB, "geoip-country-db", "", "MaxMind-format Country or City database (.mmdb) for the events' country")
	f.StringVar(&vf.set.GeoASNDB, "geoip-asn-db", "", "MaxMind-format ASN database (.mmdb) for the events' AS number")
	f.StringVar(&vf.cfg.QuotaPeriod, "quota-period", "month", "quota period, as the aggregator's: month or day (UTC)")
	f.IntVar(&vf.cfg.AnonIPv6Prefix, "anonymous-ipv6-prefix", verifier.DefaultAnonIPv6Prefix, "anonymous routes limit IPv6 clients per network of this many bits (32-128): one /64 is one client")
	f.BoolVar(&vf.cfg.BlockValidKeys, "block-valid-keys", false, "an address block (block_ip) refuses valid keys too; by default it refuses only requests without a valid, active key, so that one abuser behind a shared NAT does not lock out every key there")
	f.Int64Var(&vf.set.MemoryLimitMB, "memory-limit-mb", 0, "soft memory limit for the Go runtime (GOMEMLIMIT); 0: unset")
}

func runVerifier(ctx context.Context, vf *verifierFlags, log *slog.Logger) error {
	cfg := vf.cfg
	cfg.Logger = log
	return vf.set.RunProcess(ctx, cfg, func(ctx context.Context, dataDir string) (bus.Bus, error) { return vf.bf.open(ctx, dataDir, log) })
}

func init() {
	registerBench(newBenchRevocationCmd)
	registerBench(newBenchProxyCmd)
}

func newBenchRevocationCmd(g *globals) *cobra.Command {
	var (
		bf      busFlags
		cfg     bench.RevocationConfig
		dataDir string
		keep    bool
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
			dataDir, cleanup, err := bench.DataDir(dataDir, keep, "revocation")
			if err != nil {
				return err
			}
			defer cleanup()
			bf.Prefix = benchPrefix("benchrev")
			admin, err := bf.open(ctx, dataDir, log)
			if err != nil {
				return err
			}
			defer closeSoon(admin)
			cfg.Bus, cfg.Backend, cfg.Logger = admin, bf.Backend, log
			cfg.Connect = func(ctx context.Context) (bus.Bus, error) { return busopen.Another(ctx, bf.Config, admin, log) }
			return bench.RunRevocation(ctx, cfg)
		},
	}
	bf.add(c.Flags())
	c.Flags().IntVar(&cfg.Verifiers, "verifiers", 3, "verifier key tables, each on its own bus connection")
	c.Flags().IntVar(&cfg.Keys, "keys", 100_000, "keys in the table")
	c.Flags().IntVar(&cfg.Revocations, "revocations", 200, "revocations to time")
	c.Flags().StringVar(&dataDir, "data-dir", "", "where the embedded server keeps its store (default: a temporary directory)")
	c.Flags().BoolVar(&keep, "keep", false, "keep the temporary data directory")
	return c
}

func newBenchProxyCmd(g *globals) *cobra.Command {
	var (
		bf          busFlags
		cfg         bench.ProxyConfig
		keep        bool
		profilePath string
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
			var cleanup func()
			var err error
			cfg.DataDir, cleanup, err = bench.DataDir(cfg.DataDir, keep, "proxy")
			if err != nil {
				return err
			}
			defer cleanup()
			if profilePath != "" {
				if cfg.CPUProfile, err = os.Create(profilePath); err != nil {
					return err
				}
				defer cfg.CPUProfile.Close()
			}
			bf.Prefix = benchPrefix("benchproxy")
			b, err := bf.open(ctx, cfg.DataDir, log)
			if err != nil {
				return err
			}
			defer closeSoon(b)
			cfg.Bus, cfg.Backend, cfg.Logger = b, bf.Backend, log
			return bench.RunProxy(ctx, cfg)
		},
	}
	bf.add(c.Flags())
	c.Flags().IntVar(&cfg.Connections, "connections", 64, "concurrent keep-alive connections")
	c.Flags().DurationVar(&cfg.Duration, "duration", 5*time.Second, "length of each measurement")
	c.Flags().IntVar(&cfg.Rounds, "rounds", 2, "alternating bare/keymeter rounds")
	c.Flags().IntVar(&cfg.Keys, "keys", 10_000, "keys in the table (requests use them round-robin)")
	c.Flags().StringVar(&profilePath, "cpuprofile", "", "write a CPU profile of the first keymeter round to this file")
	c.Flags().StringVar(&cfg.DataDir, "data-dir", "", "where the embedded server and the spool live (default: a temporary directory)")
	c.Flags().BoolVar(&keep, "keep", false, "keep the temporary data directory")
	c.Flags().BoolVar(&cfg.DurableLog, "durable-log", false, "also measure a verifier with --durable-log, alternating with the others (durable_* figures)")
	c.Flags().BoolVar(&cfg.Nginx, "nginx", false, "also measure Debian's nginx with the shipped config, alone and with keymeter forward-auth (nginx_* figures)")
	c.Flags().StringVar(&cfg.NginxBin, "nginx-bin", "/usr/sbin/nginx", "nginx binary for --nginx")
	c.Flags().StringVar(&cfg.NginxConf, "nginx-conf", "deploy/proxy/nginx.conf", "the nginx.conf for --nginx (ports and paths are rewritten)")
	return c
}
