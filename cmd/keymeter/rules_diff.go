package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/backtest"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/evaluate"
)

func newRulesDiffCmd(g *globals) *cobra.Command {
	var (
		oldPaths, newPaths []string
		eventsPath         string
		labelsPath         string
		skipInvalid        bool
		limit              int
		maxRevokes         int
	)
	c := &cobra.Command{
		Use:   "diff --old DIR --new DIR --events FILE.ndjson",
		Short: "Replay one history through two rule sets and show which decisions change",
		Long: `Backtests the same NDJSON history through the --old and the --new rule set
(both replays run at once) and compares their decisions by group, mode and
action: which groups get a decision only under one set, or a different number
of them (the first --limit rows, largest changes first), the decisions per rule
and the enforced actions of each set. With --labels, both sets are also scored
against the labelled attacks (see rules backtest --labels). The last line on
stdout is a name=value summary.`,
		Example: `  keymeter rules diff --old rules/ --new rules-next/ --events eval.ndjson
  keymeter rules diff --old main-rules/ --new rules/ --events eval.ndjson --labels labels.ndjson`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(oldPaths) == 0 || len(newPaths) == 0 || eventsPath == "" {
				return errors.New("give --old, --new and --events")
			}
			cfg := backtest.DiffConfig{OldPaths: oldPaths, NewPaths: newPaths, EventsPath: eventsPath, SkipInvalid: skipInvalid,
				Limit: limit, MaxRevocationsPerHour: maxRevokes, Out: cmd.OutOrStdout(), Log: os.Stderr}
			if labelsPath != "" {
				var err error
				if cfg.Labels, err = evaluate.ReadLabelFile(labelsPath); err != nil {
					return fmt.Errorf("--labels: %w", err)
				}
			}
			for _, s := range []struct {
				name  string
				paths []string
				set   **detect.RuleSet
			}{{"old", oldPaths, &cfg.Old}, {"new", newPaths, &cfg.New}} {
				set, err := detect.LoadPaths(detect.CompileOptions{}, s.paths...)
				if err != nil {
					for _, e := range flatten(err) {
						fmt.Fprintln(os.Stderr, e)
					}
					return fmt.Errorf("--%s: %w", s.name, errFailed)
				}
				*s.set = set
			}
			return backtest.Diff(cfg)
		},
	}
	f := c.Flags()
	f.StringSliceVar(&oldPaths, "old", nil, "rule files or directories of the old set")
	f.StringSliceVar(&newPaths, "new", nil, "rule files or directories of the new set")
	f.StringVar(&eventsPath, "events", "", "NDJSON file of events in time order")
	f.StringVar(&labelsPath, "labels", "", "score both sets against these labelled attacks")
	f.BoolVar(&skipInvalid, "skip-invalid", false, "go on past lines that are not valid events")
	f.IntVar(&limit, "limit", 50, "rows of changed groups to show")
	f.IntVar(&maxRevokes, "max-revocations-per-hour", 10, "circuit breaker per rule (negative: off)")
	return c
}
