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

func (f *detectorFlags) add(c *cobra.Command) {
	fs := c.Flags()
	fs.StringSliceVar(&f.Rules, "rules", nil, "rule files or directories, hot-reloaded (default: ./rules if it exists, else the starter rules built into the binary)")
	fs.StringSliceVar(&f.AllowKeys, "allow-key", nil, "key ids rules never act on (decisions recorded as dry-run)")
	fs.StringSliceVar(&f.AllowCIDRs, "allow-cidr", nil, "client networks rules never act on")
	fs.IntVar(&f.MaxRevokes, "max-revocations-per-hour", 10, "circuit breaker per rule: distinct keys suspended or revoked per hour before the rule's suspensions and revocations turn to dry-run (negative: off)")
	fs.IntVar(&f.MaxGlobal, "max-revocations-global", 20, "circuit breaker across rules: distinct keys per hour (negative: off)")
	fs.DurationVar(&f.Reload, "reload-interval", 2*time.Second, "how often rule files are checked for changes")
	fs.DurationVar(&f.Lookback, "baseline-lookback", 7*24*time.Hour, "history the per-key baselines are computed over")
	fs.DurationVar(&f.WarmStart, "profile-warm-start", 24*time.Hour, "stored history replayed into the key profiles at start, decisions off (negative: none)")
	fs.DurationVar(&f.Maturity, "profile-maturity", 0, "history a key or network needs before spread and novelty rules may act on it (0: 12h)")
	fs.DurationVar(&f.Seasonal, "profile-seasonal", 24*time.Hour, "history a key needs before volume rules compare it with its usual hour of the day")
	fs.DurationVar(&f.Grace, "profile-novelty-grace", time.Hour, "how long a country, ASN or network stays new for a key after it was first seen")
	fs.StringVar(&f.Group, "detector-group", "detector", "consumer group of the detector")
}

// demoDefaults shortens the profiles' learning for keymeter dev, whose demo
// keys are seconds old when the demo attacks start: mature after 5s,
// countries and networks established after 5s. A production detector
// keeps 12h and 1h. Seasonality keeps its day: without a full hour seen,
// volume rules would take any steady key for a spike.
func (f *detectorFlags) demoDefaults(c *cobra.Command) {
	for name, v := range map[string]string{"profile-maturity": "5s", "profile-novelty-grace": "5s"} {
		fl := c.Flags().Lookup(name)
		fl.DefValue = v
		_ = fl.Value.Set(v)
	}
}

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
				db, err := sf.open(ctx)
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
	c.Flags().StringVar(&sf.DataDir, "data-dir", "data", "where state lives (embedded NATS and ClickHouse)")
	sf.add(c.Flags())
	c.Flags().Lookup("store").Usage += "; none: decisions go to the bus only"
	df.add(c)
	c.Flags().DurationVar(&duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	c.Flags().StringVar(&adminListen, "admin-listen", "127.0.0.1:9466", "address of /metrics, /healthz, /readyz (empty to disable)")
	return c
}
