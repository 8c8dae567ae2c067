package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/backtest"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/rules"
)

func init() {
	register(newRulesCmd)
}

// errFailed makes the command exit non-zero after it printed why.
var errFailed = errors.New("the rule files do not load (see above)")

func newRulesCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "rules",
		Short: "Detection rules: lint, test and backtest rule files",
	}
	c.AddCommand(newRulesLintCmd(g), newRulesTestCmd(g), newRulesBacktestCmd(g), newRulesDiffCmd(g))
	return c
}

func newRulesLintCmd(g *globals) *cobra.Command {
	var costLimit uint64
	c := &cobra.Command{
		Use:   "lint PATH...",
		Short: "Check rule files: JSON Schema, field types, CEL compilation and static cost",
		Long: `Checks every rule file (*.yaml, *.yml) under the given files and directories
against the JSON Schema of the rule file, decodes it strictly (unknown fields
and type errors are refused with file:line), compiles every CEL expression
with its static cost, and reports which expressions run on the native fast
path and which through the CEL interpreter. Exits non-zero on any problem.`,
		Example: "  keymeter rules lint rules/\n  keymeter rules lint rules/geography-shift.yaml",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := detect.Lint(cmd.OutOrStdout(), costLimit, args...)
			if err != nil {
				return err
			}
			if res.Problems > 0 {
				return fmt.Errorf("rules lint: %d problem(s) in %d file(s)", res.Problems, res.Files)
			}
			return nil
		},
	}
	c.Flags().Uint64Var(&costLimit, "cost-limit", detect.DefaultCostLimit, "static CEL cost ceiling per expression")
	return c
}

// flatten splits an errors.Join tree into its leaves.
func flatten(err error) []error { return detect.FlattenErrors(err) }

// loadRules loads the rules of paths (rules.Resolve: the built-in starter
// rules when none are given and ./rules does not exist), printing every
// problem on stderr; the error is then errFailed.
func loadRules(paths []string) (*detect.RuleSet, error) {
	set, err := rules.Resolve(paths).Load(detect.CompileOptions{})
	if err != nil {
		for _, e := range flatten(err) {
			fmt.Fprintln(os.Stderr, e)
		}
		return nil, errFailed
	}
	return set, nil
}

func newRulesTestCmd(g *globals) *cobra.Command {
	var (
		verbose bool
		run     string
	)
	c := &cobra.Command{
		Use:   "test PATH...",
		Short: "Run the rules' inline tests; exits non-zero on a failure and shows expected vs actual",
		Long: `Runs every inline test of the rules under the given paths: the test's events
are generated, replayed in event time through a fresh engine holding only that
rule, and the decisions (action, group, mode, number of times) are compared
with the test's expect list. A failure prints the difference: "-" lines were
expected and did not happen, "+" lines happened and were not expected.`,
		Example: "  keymeter rules test rules/\n  keymeter rules test --run geography rules/",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rules, err := detect.ParsePaths(args...)
			if err != nil {
				for _, e := range flatten(err) {
					fmt.Fprintln(cmd.OutOrStdout(), e)
				}
				return errors.New("rules test: the rule files do not load")
			}
			if run != "" {
				var keep []*detect.Rule
				for _, r := range rules {
					if strings.Contains(r.ID, run) {
						keep = append(keep, r)
					}
				}
				rules = keep
			}
			results := detect.RunTests(rules, detect.CompileOptions{})
			if !detect.WriteTestReport(cmd.OutOrStdout(), results, verbose) {
				return errors.New("rules test: failures (see above)")
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "also list the firings of passing tests")
	c.Flags().StringVar(&run, "run", "", "only rules whose id contains this")
	return c
}

// backtestFlags are the flags of `keymeter rules backtest`.
type backtestFlags struct {
	backtest.Flags
	sf storeFlags
}

func newRulesBacktestCmd(g *globals) *cobra.Command {
	o := &backtestFlags{}
	c := &cobra.Command{
		Use:   "backtest --rules DIR (--events FILE.ndjson | --from T --to T)",
		Short: "Replay events through the rules in event time and report what would have fired",
		Long: `Replays an NDJSON file of usage events (the JSON event schema, one per line,
in time order) through the same engine the detector runs, in event time, and
reports per rule: matched events, groups, decisions by mode and action. Nothing
is acted on. --decisions writes every decision as NDJSON (protobuf JSON of
keymeter.v1.Decision). Progress goes to stderr.

Without --events, the events of [--from, --to) are read from the store
(--store, --data-dir, --clickhouse-dsn), oldest first: stored history.

A line that is not a valid event stops the replay with the report so far and
the line number and field; --skip-invalid goes on past bad lines. Either way
bad lines are counted by field and the first ones shown. With --json, the report is the same object as
before unless --labels is given or lines were bad: then {"backtest": report,
"labels": score, "bad_lines": N, "bad_lines_by_field": {...}}.

--labels FILE scores the decisions against labelled attacks (NDJSON, one per
line; see "Detection evaluation" in the README): per label, whether it was
detected (a decision on its group within [start, end+--grace]) and whether the
intended action was taken (enforced; at least as strong on alert < throttle <
suspend < revoke; block_ip covering the label's network); overall, benign keys
revoked or suspended, enforced false actions and benign alerts per 10M benign
events. The last line on stdout is a name=value summary.`,
		Example: `  keymeter rules backtest --rules rules/ --events events.ndjson
  keymeter rules backtest --rules rules/ --events events.ndjson --from 2026-03-01T00:00:00Z --to 2026-03-02T00:00:00Z --decisions out.ndjson
  keymeter rules backtest --rules rules/ --from 2026-11-24T00:00:00Z --to 2026-11-25T00:00:00Z --data-dir data   # stored history
  keymeter rules backtest --rules rules/ --events eval.ndjson --labels labels.ndjson`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd, g) },
	}
	o.add(c.Flags())
	return c
}

func (o *backtestFlags) add(f *pflag.FlagSet) {
	o.Bind(f)
	o.sf.Bind(f)
}

// run loads the rules and runs the backtest.
func (o *backtestFlags) run(cmd *cobra.Command, g *globals) error {
	set, err := loadRules(o.Rules)
	if err != nil {
		return err
	}
	cfg, err := o.Config(set, o.sf.Open, g.Logger(), cmd.OutOrStdout(), os.Stderr)
	if err != nil {
		return err
	}
	return backtest.Run(cmd.Context(), cfg)
}
