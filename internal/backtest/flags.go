package backtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/evaluate"
	"github.com/keymeter/keymeter/internal/store"
)

// Flags are the flags of `keymeter rules backtest` but the store's.
type Flags struct {
	Rules                               []string
	EventsPath, From, To                string
	DecisionsPath, LabelsPath           string
	AllowKeys, AllowCIDRs               []string
	MaxRevokes, MaxGlobal               int
	Warmup, Maturity, Seasonal, Novelty time.Duration
	Grace                               time.Duration
	JSON, SkipInvalid                   bool
}

// Bind defines the backtest's flags on fs.
func (f *Flags) Bind(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.Rules, "rules", nil, "rule files or directories (default: ./rules if it exists, else the starter rules built into the binary)")
	fs.StringVar(&f.EventsPath, "events", "", "NDJSON file of events in time order (- for stdin); empty: stored history of --from..--to")
	fs.StringVar(&f.From, "from", "", "skip events before this time (RFC 3339)")
	fs.StringVar(&f.To, "to", "", "stop at events from this time on (RFC 3339)")
	fs.StringVar(&f.DecisionsPath, "decisions", "", "write every decision to this NDJSON file")
	fs.StringSliceVar(&f.AllowKeys, "allow-key", nil, "allowlisted key id (repeatable)")
	fs.StringSliceVar(&f.AllowCIDRs, "allow-cidr", nil, "allowlisted client network (repeatable)")
	fs.IntVar(&f.MaxRevokes, "max-revocations-per-hour", 10, "circuit breaker per rule: distinct keys suspended or revoked per hour (negative: off)")
	fs.IntVar(&f.MaxGlobal, "max-revocations-global", 20, "circuit breaker across rules: distinct keys per hour (negative: off)")
	fs.DurationVar(&f.Warmup, "warmup", 0, "learn profiles and windows from the first DURATION of the history before decisions count (keys are judged only once their own profile is mature either way)")
	fs.DurationVar(&f.Maturity, "profile-maturity", 0, "history a key or network needs before spread and novelty rules may act on it (0: 12h)")
	fs.DurationVar(&f.Seasonal, "profile-seasonal", 0, "history a key needs before volume rules compare it with its usual hour of the day (0: 24h)")
	fs.DurationVar(&f.Novelty, "profile-novelty-grace", 0, "how long a country, ASN or network stays new after it was first seen (0: 1h)")
	fs.BoolVar(&f.JSON, "json", false, "print the report as JSON")
	fs.StringVar(&f.LabelsPath, "labels", "", "NDJSON file of labelled attacks to score the decisions against")
	fs.DurationVar(&f.Grace, "grace", evaluate.DefaultGrace, "--labels: a decision this long after an attack's end still counts for it")
	fs.BoolVar(&f.SkipInvalid, "skip-invalid", false, "go on past lines that are not valid events (counted and reported)")
}

// Config is the run of the flags on the rules set, reading stored history
// from the store openStore opens; the report goes to out, progress to log.
func (f *Flags) Config(set *detect.RuleSet, openStore func(context.Context) (*store.DB, error), logger *slog.Logger, out, log io.Writer) (Config, error) {
	from, to, err := ParseRange(f.From, f.To)
	if err != nil {
		return Config{}, err
	}
	return Config{Rules: set,
		Detect: detect.Config{Allowlist: detect.Allowlist{Keys: f.AllowKeys, CIDRs: f.AllowCIDRs}, MaxRevocationsPerHour: f.MaxRevokes,
			MaxRevocationsGlobal: f.MaxGlobal, Warmup: f.Warmup,
			Profiles: detect.ProfileConfig{Maturity: f.Maturity, Seasonal: f.Seasonal, NoveltyGrace: f.Novelty}, Logger: logger},
		EventsPath: f.EventsPath, From: from, To: to, OpenStore: openStore,
		DecisionsPath: f.DecisionsPath, LabelsPath: f.LabelsPath, Grace: f.Grace, SkipInvalid: f.SkipInvalid, JSON: f.JSON,
		Out: out, Log: log}, nil
}

// DiffFlags are the flags of `keymeter rules diff`.
type DiffFlags struct {
	Old, New    []string
	EventsPath  string
	LabelsPath  string
	SkipInvalid bool
	Limit       int
	MaxRevokes  int
}

// Bind defines the diff's flags on fs.
func (f *DiffFlags) Bind(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.Old, "old", nil, "rule files or directories of the old set")
	fs.StringSliceVar(&f.New, "new", nil, "rule files or directories of the new set")
	fs.StringVar(&f.EventsPath, "events", "", "NDJSON file of events in time order")
	fs.StringVar(&f.LabelsPath, "labels", "", "score both sets against these labelled attacks")
	fs.BoolVar(&f.SkipInvalid, "skip-invalid", false, "go on past lines that are not valid events")
	fs.IntVar(&f.Limit, "limit", 50, "rows of changed groups to show")
	fs.IntVar(&f.MaxRevokes, "max-revocations-per-hour", 10, "circuit breaker per rule (negative: off)")
}

// Run loads both rule sets (printing every problem of a set that does not
// load on log) and the labels, and runs Diff.
func (f *DiffFlags) Run(out, log io.Writer) error {
	if len(f.Old) == 0 || len(f.New) == 0 || f.EventsPath == "" {
		return errors.New("give --old, --new and --events")
	}
	cfg := DiffConfig{OldPaths: f.Old, NewPaths: f.New, EventsPath: f.EventsPath, SkipInvalid: f.SkipInvalid,
		Limit: f.Limit, MaxRevocationsPerHour: f.MaxRevokes, Out: out, Log: log}
	if f.LabelsPath != "" {
		var err error
		if cfg.Labels, err = evaluate.ReadLabelFile(f.LabelsPath); err != nil {
			return fmt.Errorf("--labels: %w", err)
		}
	}
	for _, s := range []struct {
		name  string
		paths []string
		set   **detect.RuleSet
	}{{"old", f.Old, &cfg.Old}, {"new", f.New, &cfg.New}} {
		set, err := detect.LoadPaths(detect.CompileOptions{}, s.paths...)
		if err != nil {
			for _, e := range detect.FlattenErrors(err) {
				fmt.Fprintln(log, e)
			}
			return fmt.Errorf("--%s: the rule files do not load (see above)", s.name)
		}
		*s.set = set
	}
	return Diff(cfg)
}
