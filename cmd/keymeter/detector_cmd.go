package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/store"
)

func init() { register(newDetectorCmd) }

// detectorFlags configure the detection role (detector.Settings).
type detectorFlags struct{ detector.Settings }

func (f *detectorFlags) config(b detector.Bus, st store.Store, ka detector.KeyActions, reg prometheus.Registerer, log *slog.Logger) detector.RunConfig {
	return f.Settings.Config(b, st, ka, reg, log)
}

func newDetectorCmd(g *globals) *cobra.Command {
	var (
		bf          busFlags
		sf          storeFlags
		df          detectorFlags
		duration    time.Duration
		adminListen string
	)
	c := &cobra.Command{
		Use:   "detector",
		Short: "Run the CEL detection rules on the live event stream and act on what they find",
		Long: `The detector evaluates every rule on every event, in event time, against each
key's learned profile (warm-started from the stored history of the last
--profile-warm-start). Decisions are published on keymeter.decisions and
stored with their evidence; enforced revocations, suspensions and throttles
are written to the key-state log, where every verifier applies them within
milliseconds. Rule files are hot-reloaded: a bad file is refused and the
running rules stay.`,
		Example: `  keymeter detector --rules rules/ --data-dir data`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := withDuration(cmd.Context(), duration)
			defer cancel()
			log := g.Logger()
			var st store.Store // none: decisions go to the bus only, baselines start at the rules' defaults
			if sf.Backend != "none" {
				db, err := sf.Open(ctx)
				if err != nil {
					return err
				}
				defer db.Close(context.Background())
				st = db
			}
			b, err := bf.open(ctx, sf.DataDir, log)
			if err != nil {
				return err
			}
			defer closeSoon(b)
			table, svc, err := keyService(b, log)
			if err != nil {
				return err
			}
			reg := newRegistry()
			role, err := detector.Assemble(ctx, df.config(b, st, svc, reg, log))
			if err != nil {
				return err
			}
			eg, ectx := errgroup.WithContext(ctx)
			eg.Go(func() error { return table.Run(ectx, b) })
			eg.Go(func() error { return role.Run(ectx) })
			if adminListen != "" {
				ln, err := listen(adminListen, "--admin-listen")
				if err != nil {
					return err
				}
				eg.Go(func() error { return serve(ectx, ln, metricsHandler(reg, table.Loaded), log) })
			}
			if err := eg.Wait(); err != nil && ctx.Err() == nil {
				return err
			}
			return nil
		},
	}
	bf.add(c.Flags())
	sf.BindWithDataDir(c.Flags(), "where state lives (embedded NATS and ClickHouse)")
	c.Flags().Lookup("store").Usage += "; none: decisions go to the bus only"
	df.Bind(c.Flags())
	c.Flags().DurationVar(&duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	c.Flags().StringVar(&adminListen, "admin-listen", "127.0.0.1:9466", "address of /metrics, /healthz, /readyz (empty to disable)")
	return c
}
