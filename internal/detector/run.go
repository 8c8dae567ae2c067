package detector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/rules"
)

// History is stored events, oldest first (*store.DB): the profiles'
// warm start.
type History interface {
	ScanEvents(ctx context.Context, from, to time.Time, pageSize int, fn func(event.Event) error) error
}

// RunConfig is the detection role: what `keymeter detector` and
// `keymeter dev` run.
type RunConfig struct {
	// Rules are rule files or directories, hot-reloaded; none: ./rules if
	// it exists, else the starter rules built into the binary
	// (rules.Resolve).
	Rules          []string
	ReloadInterval time.Duration
	AllowKeys      []string
	AllowCIDRs     []string
	// Circuit breaker budgets, in distinct keys suspended or revoked per
	// hour: per rule and across rules (0: the engine's defaults, 10 and
	// 20; negative: off).
	MaxRevocationsPerHour int
	MaxRevocationsGlobal  int
	Group                 string        // consumer group (default "detector")
	BaselineLookback      time.Duration // history of the rules' baselines (default 7 days)
	// ProfileWarmStart is how much stored history is replayed, decisions
	// off, into the profiles before the live stream (default 24h; negative:
	// none). Needs History.
	ProfileWarmStart time.Duration
	Profiles         detect.ProfileConfig
	// KeyKind tells rules (key_kind) what a key is; nil: every key is a
	// server key.
	KeyKind func(keyID string) string

	Bus        Bus         // required
	Store      store.Store // optional: decisions then go to the bus only, baselines start at the rules' defaults
	History    History     // optional: the profiles' warm start
	Keys       KeyActions  // optional: without it enforced decisions are only recorded
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Validate reports every problem of the configuration; it changes nothing.
func (c *RunConfig) Validate() error {
	var errs []error
	if c.Bus == nil {
		errs = append(errs, errors.New("detector: RunConfig.Bus is required"))
	}
	return errors.Join(errs...)
}

// Role is an assembled detection role: the engine (a library, from
// internal/detect), the rule reloader, the baselines and the Detector that
// consumes the bus and carries decisions out.
type Role struct {
	cfg      RunConfig
	det      *Detector
	engine   *detect.Engine
	reloader *detect.Reloader
	base     *Baselines
	log      *slog.Logger
}

// Assemble loads the rules (refusing to start without a valid set), the
// baselines and the profiles' warm start, and wires the parts.
func Assemble(ctx context.Context, cfg RunConfig) (*Role, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.ReloadInterval == 0 {
		cfg.ReloadInterval = 2 * time.Second
	}
	if cfg.BaselineLookback == 0 {
		cfg.BaselineLookback = 7 * 24 * time.Hour
	}
	if cfg.ProfileWarmStart == 0 {
		cfg.ProfileWarmStart = 24 * time.Hour
	}
	src := rules.Resolve(cfg.Rules) // the built-in starter rules when none are given and ./rules does not exist
	set, err := src.Load(detect.CompileOptions{})
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	var usage store.UsageReader
	if cfg.Store != nil {
		usage = cfg.Store
	}
	base := NewBaselines(usage, cfg.BaselineLookback)
	base.SetRules(set)
	if cfg.Store == nil {
		log.Info("detector: no store; baselines start at the rules' defaults")
	} else if n, err := base.Load(ctx); err != nil {
		log.Warn("detector: baselines not loaded; rules start from their defaults", "err", err)
	} else {
		log.Info("detector: baselines loaded", "keys", n)
	}
	dcfg := Config{Group: cfg.Group, Bus: cfg.Bus, Keys: cfg.Keys, Logger: log}
	if cfg.Store != nil {
		dcfg.Store = cfg.Store
		if a, ok := cfg.Store.(store.AuditLog); ok { // *store.DB keeps the audit trail
			dcfg.Audit = a
		}
	}
	det, err := New(dcfg)
	if err != nil {
		return nil, err
	}
	var m *detect.Metrics
	if cfg.Registerer != nil {
		m = detect.NewMetrics(cfg.Registerer)
	}
	eng, err := detect.New(detect.Config{Sink: det.Sink(), Baselines: base, Allowlist: detect.Allowlist{Keys: cfg.AllowKeys, CIDRs: cfg.AllowCIDRs},
		MaxRevocationsPerHour: cfg.MaxRevocationsPerHour, MaxRevocationsGlobal: cfg.MaxRevocationsGlobal,
		Profiles: cfg.Profiles, KeyKind: cfg.KeyKind, Metrics: m, Logger: log}, set)
	if err != nil {
		return nil, err
	}
	det.SetEngine(eng)
	if cfg.History != nil && cfg.ProfileWarmStart > 0 {
		warmStart(ctx, eng, cfg.History, cfg.ProfileWarmStart, log)
	}
	rl := &detect.Reloader{Paths: src.Paths, FS: src.FS, Swap: func(s *detect.RuleSet) { eng.Swap(s); base.SetRules(s) },
		Interval: cfg.ReloadInterval, Logger: log, Metrics: m}
	_, _ = rl.Reload() // record the fingerprint of what is loaded
	log.Info("detector: rules loaded", "rules", set.Len())
	return &Role{cfg: cfg, det: det, engine: eng, reloader: rl, base: base, log: log}, nil
}

// warmStart replays the last span of stored events into the engine with
// decisions off: profiles (and windows) start from history, not from
// nothing. A failure only costs the warm start.
func warmStart(ctx context.Context, eng *detect.Engine, h History, span time.Duration, log *slog.Logger) {
	start := time.Now()
	to := start
	batch := make([]event.Event, 0, 4096)
	var n int
	err := h.ScanEvents(ctx, to.Add(-span), to, 50_000, func(e event.Event) error {
		batch = append(batch, e)
		if len(batch) == cap(batch) {
			eng.Learn(batch)
			n += len(batch)
			batch = batch[:0]
		}
		return ctx.Err()
	})
	eng.Learn(batch)
	n += len(batch)
	if err != nil {
		log.Warn("detector: profile warm start incomplete", "events", n, "err", err)
		return
	}
	st := eng.Stats().Profiles
	log.Info("detector: profiles warm-started from stored history", "events", n, "keys", st.Keys, "networks", st.Networks,
		"span", span, "took", time.Since(start).Round(time.Millisecond))
}

// Engine is the role's engine (rule statuses for the API, breaker resets).
func (r *Role) Engine() *detect.Engine { return r.engine }

// Detector is the role's bus consumer and actor.
func (r *Role) Detector() *Detector { return r.det }

// Run runs the reloader, the baseline refresh and the detector until ctx
// ends or one fails.
func (r *Role) Run(ctx context.Context) error {
	eg, ectx := errgroup.WithContext(ctx)
	eg.Go(func() error { return r.reloader.Run(ectx) })
	eg.Go(func() error { r.base.Run(ectx, 10*time.Minute); return nil })
	eg.Go(func() error { return r.det.Run(ectx) })
	return eg.Wait()
}

// Run assembles the detection role and runs it until ctx ends.
func Run(ctx context.Context, cfg RunConfig) error {
	r, err := Assemble(ctx, cfg)
	if err != nil {
		return err
	}
	return r.Run(ctx)
}
