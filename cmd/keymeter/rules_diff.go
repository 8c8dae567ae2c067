package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/backtest"
)

func newRulesDiffCmd(g *globals) *cobra.Command {
	var f backtest.DiffFlags
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
		RunE: func(cmd *cobra.Command, _ []string) error { return f.Run(cmd.OutOrStdout(), os.Stderr) },
	}
	f.Bind(c.Flags())
	return c
}
