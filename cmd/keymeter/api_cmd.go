package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/leaks"
)

func init() { register(newAPICmd) }

func parseTokens(specs []string) ([]api.Token, error) {
	var out []api.Token
	for _, s := range specs {
		t, err := api.ParseToken(s)
		if err != nil {
			return nil, fmt.Errorf("--admin-token: %w", err)
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--admin-token is required: role:sha256hex, e.g. admin:$(printf %%s \"$TOKEN\" | sha256sum | cut -d' ' -f1)")
	}
	return out, nil
}

func newAPICmd(g *globals) *cobra.Command {
	var (
		bf          busFlags
		sf          storeFlags
		lf          leaks.Flags
		listenAt    string
		adminListen string
		tokens      []string
		duration    time.Duration
	)
	c := &cobra.Command{
		Use:   "api",
		Short: "Serve the REST API: keys, usage, logs, billing, rules, decisions, leak reports",
		Long: `The API manages keys (every change is an event on the key-state log that
verifiers apply within milliseconds) and answers usage, log, billing and
decision queries from the store. Its description is served at /openapi.yaml.

Admin tokens are configured as role:sha256hex (role admin or read); only the
hash of a token is ever stored.`,
		Example: `  keymeter api --admin-token admin:$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := withDuration(cmd.Context(), duration)
			defer cancel()
			log := g.Logger()
			toks, err := parseTokens(tokens)
			if err != nil {
				return err
			}
			leakCfg, err := lf.Config()
			if err != nil {
				return err
			}
			cfg := api.RunConfig{Listen: listenAt, AdminListen: adminListen, Tokens: toks, Leaks: leakCfg, Logger: log}
			if sf.Backend != "none" {
				st, err := sf.Open(ctx)
				if err != nil {
					return err
				}
				defer st.Close(context.Background()) // after the bus: deferred first
				cfg.Store = st
			}
			b, err := bf.open(ctx, sf.DataDir, log)
			if err != nil {
				return err
			}
			defer closeSoon(b)
			cfg.Bus = b
			return api.Run(ctx, cfg)
		},
	}
	f := c.Flags()
	bf.add(f)
	f.StringVar(&sf.DataDir, "data-dir", "data", "where state lives (embedded NATS and ClickHouse)")
	sf.Bind(f)
	f.Lookup("store").Usage += "; none: keys only (usage, logs, billing answer 503)"
	lf.Bind(f)
	f.StringVar(&listenAt, "listen", "127.0.0.1:8081", "address of the API")
	f.StringVar(&adminListen, "admin-listen", "127.0.0.1:9467", "address of /metrics, /healthz, /readyz (empty to disable)")
	f.StringSliceVar(&tokens, "admin-token", nil, "admin token hashes, role:sha256hex (role admin or read); repeatable")
	f.DurationVar(&duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	return c
}
