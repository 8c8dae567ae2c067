package main

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/verifier"
)

func init() { register(newVerifierCmd) }

// verifierFlags are the verifier's flags.
type verifierFlags struct {
	bf busFlags
	verifier.Flags
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
			ctx, cancel := withDuration(cmd.Context(), vf.Duration)
			defer cancel()
			return runVerifier(ctx, vf, g.Logger())
		},
	}
	vf.bf.add(c.Flags())
	vf.Bind(c.Flags())
	return c
}

func runVerifier(ctx context.Context, vf *verifierFlags, log *slog.Logger) error {
	cfg := vf.Config
	cfg.Logger = log
	return vf.Settings.RunProcess(ctx, cfg, func(ctx context.Context, dataDir string) (bus.Bus, error) { return vf.bf.open(ctx, dataDir, log) })
}
