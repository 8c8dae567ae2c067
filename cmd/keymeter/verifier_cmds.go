package main

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

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
	)
	c := &cobra.Command{
		Use:   "verifier",
		Short: "Verify API keys at the edge: reverse proxy or forward-auth endpoint, metering every request",
		Long: `The verifier loads the whole key table from the bus's key-state log, follows
its changes live, and decides on every request from memory. With --upstream it
is a reverse proxy; without, --listen answers forward-auth subrequests (nginx
auth_request, Envoy ext_authz HTTP, Traefik/Caddy forward auth; see
deploy/proxy/). Every request becomes a usage event on the bus; while the bus
is unreachable events are spooled under --data-dir and replayed later.

Admin endpoints on --admin-listen: /metrics (Prometheus), /healthz, /readyz
(ready once the key table is loaded).`,
		Example: `  keymeter verifier --upstream http://127.0.0.1:9000 --listen :8080
  keymeter verifier --listen 127.0.0.1:8081 --route /public,anonymous=5/10 --route /admin,scope=admin
  keymeter verifier --bus nats --nats-url nats://nats:4222 --upstream http://api:9000 --data-dir /var/lib/keymeter`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			log := g.Logger()
			for _, r := range routes {
				rt, err := verifier.ParseRoute(r)
				if err != nil {
					return fmt.Errorf("--route: %w", err)
				}
				cfg.Routes = append(cfg.Routes, rt)
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
	f.StringVar(&cfg.Listen, "listen", ":8080", "address of the reverse proxy (with --upstream) or of the forward-auth endpoint")
	f.StringVar(&cfg.Upstream, "upstream", "", "upstream API URL; empty: --listen serves forward auth only")
	f.StringVar(&cfg.AuthListen, "auth-listen", "", "additional forward-auth address while proxying")
	f.StringVar(&cfg.AdminListen, "admin-listen", ":9464", "address of /metrics, /healthz, /readyz (empty to disable)")
	f.StringVar(&cfg.DataDir, "data-dir", "data", "where state lives: event spool, embedded NATS store")
	f.DurationVar(&duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	f.StringVar(&cfg.VerifierID, "verifier-id", "", "this verifier's id in events (default verifier-<hostname>); unique per instance")
	f.StringArrayVar(&routes, "route", nil, "route rule PREFIX[,scope=S][,anonymous=RATE[/BURST]][,cost=N]; repeatable; longest prefix wins")
	f.StringVar(&cfg.HTTP.QueryParam, "query-param", "", "query parameter that may carry the key (removed before forwarding); empty: headers only")
	f.StringSliceVar(&trusted, "trusted-proxy", []string{"127.0.0.0/8", "::1/128"}, "CIDRs whose X-Forwarded-For is believed (forward-auth callers, load balancers)")
	f.StringVar(&cfg.HTTP.CountryHeader, "country-header", "", "CDN header with the client's country, e.g. CF-IPCountry")
	f.Int64Var(&maxSpoolMB, "max-spool-mb", 1024, "bound of the on-disk event spool; beyond it events are dropped and counted")
	f.IntVar(&queue, "event-queue", 1<<16, "events waiting to be batched; beyond it events are dropped and counted")
	f.IntVar(&maxBatch, "max-batch", 1000, "events per batch")
	f.DurationVar(&flushEvery, "flush-interval", 50*time.Millisecond, "longest an event waits for its batch")
	f.Int64Var(&memLimitMB, "memory-limit-mb", 0, "soft memory limit for the Go runtime (GOMEMLIMIT); 0: unset")
	return c
}

func setMemoryLimit(bytes int64) { debug.SetMemoryLimit(bytes) }
