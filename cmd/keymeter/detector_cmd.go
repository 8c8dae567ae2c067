package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/rules"
)

func init() { register(newDetectorCmd) }

// detectorFlags configure the detection role.
type detectorFlags struct {
	Rules      []string
	AllowKeys  []string
	AllowCIDRs []string
	MaxRevokes int
	Reload     time.Duration
	Lookback   time.Duration
	Group      string
}

func (f *detectorFlags) add(c *cobra.Command) {
	fs := c.Flags()
	fs.StringSliceVar(&f.Rules, "rules", nil, "rule files or directories, hot-reloaded (default: ./rules if it exists, else the starter rules built into the binary)")
	fs.StringSliceVar(&f.AllowKeys, "allow-key", nil, "key ids rules never act on (decisions recorded as dry-run)")
	fs.StringSliceVar(&f.AllowCIDRs, "allow-cidr", nil, "client networks rules never act on")
	fs.IntVar(&f.MaxRevokes, "max-revocations-per-hour", 10, "circuit breaker: a rule revoking more keys than this in an hour turns to dry-run")
	fs.DurationVar(&f.Reload, "reload-interval", 2*time.Second, "how often rule files are checked for changes")
	fs.DurationVar(&f.Lookback, "baseline-lookback", 7*24*time.Hour, "history the per-key baselines are computed over")
	fs.StringVar(&f.Group, "detector-group", "detector", "consumer group of the detector")
}

// detectorParts is a wired detector, ready to run in an errgroup.
type detectorParts struct {
	det      *detector.Detector
	engine   *detect.Engine
	reloader *detect.Reloader
	base     *detector.Baselines
}

func buildDetector(ctx context.Context, f *detectorFlags, b detector.Bus, st store.Store, ka detector.KeyActions, reg prometheus.Registerer, log *slog.Logger) (*detectorParts, error) {
	src := rules.Resolve(f.Rules)
	set, err := src.Load(detect.CompileOptions{})
	if err != nil {
		return nil, fmt.Errorf("--rules: %w", err)
	}
	base := detector.NewBaselines(st, f.Lookback)
	base.SetRules(set)
	if st == nil {
		log.Info("detector: no store; baselines start at the rules' defaults")
	} else if n, err := base.Load(ctx); err != nil {
		log.Warn("detector: baselines not loaded; rules start from their defaults", "err", err)
	} else {
		log.Info("detector: baselines loaded", "keys", n)
	}
	dcfg := detector.Config{Group: f.Group, Bus: b, Keys: ka, Logger: log}
	if st != nil {
		dcfg.Store = st
	}
	det, err := detector.New(dcfg)
	if err != nil {
		return nil, err
	}
	m := detect.NewMetrics(reg)
	eng, err := detect.New(detect.Config{Sink: det.Sink(), Baselines: base, Allowlist: detect.Allowlist{Keys: f.AllowKeys, CIDRs: f.AllowCIDRs},
		MaxRevocationsPerHour: f.MaxRevokes, Metrics: m, Logger: log}, set)
	if err != nil {
		return nil, err
	}
	det.SetEngine(eng)
	rl := &detect.Reloader{Paths: src.Paths, FS: src.FS, Swap: func(s *detect.RuleSet) { eng.Swap(s); base.SetRules(s) }, Interval: f.Reload, Logger: log, Metrics: m}
	_, _ = rl.Reload() // record the fingerprint of what is loaded
	log.Info("detector: rules loaded", "rules", set.Len())
	return &detectorParts{det: det, engine: eng, reloader: rl, base: base}, nil
}

func (p *detectorParts) run(ctx context.Context, eg *errgroup.Group) {
	eg.Go(func() error { return p.reloader.Run(ctx) })
	eg.Go(func() error { p.base.Run(ctx, 10*time.Minute); return nil })
	eg.Go(func() error { return p.det.Run(ctx) })
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
		Long: `The detector evaluates every rule on every event, in event time. Decisions are
published on keymeter.decisions and stored with their evidence; enforced
revocations, suspensions and throttles are written to the key-state log, where
every verifier applies them within milliseconds. Rule files are hot-reloaded: a
bad file is refused and the running rules stay.`,
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
				defer db.Close()
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
			parts, err := buildDetector(ctx, &df, b, st, svc, reg, log)
			if err != nil {
				return err
			}
			eg, ectx := errgroup.WithContext(ctx)
			eg.Go(func() error { return table.Run(ectx, b) })
			parts.run(ectx, eg)
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
