package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/leaks"
)

func init() { register(newAPICmd) }

func newAPICmd(g *globals) *cobra.Command {
	var (
		bf       busFlags
		sf       storeFlags
		lf       leaks.Flags
		af       api.Flags
		duration time.Duration
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
			cfg, err := af.RunConfig()
			if err != nil {
				return err
			}
			if cfg.Leaks, err = lf.Config(); err != nil {
				return err
			}
			cfg.Logger = log
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
	sf.BindWithDataDir(f, "where state lives (embedded NATS and ClickHouse)")
	f.Lookup("store").Usage += "; none: keys only (usage, logs, billing answer 503)"
	lf.Bind(f)
	af.Bind(f)
	f.DurationVar(&duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	return c
}
