package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/store"
)

func init() { registerBench(newBenchConsoleCmd) }

// bench console: the server time of every console page over a generated
// history (the harness is bench.ConsoleRun).
func newBenchConsoleCmd(g *globals) *cobra.Command {
	var sf storeFlags
	var run bench.ConsoleRun
	c := &cobra.Command{
		Use:   "console",
		Short: "Server time of each console page over a generated history (default 100M events, 30 days, 100k keys; target 200 ms)",
		Example: `  keymeter bench console                                  # 100M rows: the dataset builds first (~13 min here)
  keymeter bench console --rows 10000000 --keys 10000
  keymeter bench console --data-dir /tmp/km --keep --store-database console100m   # keep the dataset for another run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("data-dir") {
				run.DataDir = sf.DataDir
			}
			run.Config.Backend = sf.Backend
			run.Open = func(ctx context.Context, dir string) (*store.DB, error) {
				sf.DataDir = dir
				return sf.Open(ctx)
			}
			return run.Run(cmd.Context())
		},
	}
	f := c.Flags()
	sf.Bind(f)
	_ = f.Set("store-database", "bench_console")
	f.IntVar(&run.Config.Rows, "rows", 100_000_000, "events in the generated history")
	f.IntVar(&run.Config.Keys, "keys", 100_000, "distinct keys in the history")
	f.DurationVar(&run.Config.Span, "span", 720*time.Hour, "time the history covers, ending now")
	f.IntVar(&run.Config.TableKeys, "table-keys", 1000, "keys created in the key table (the keys page, the overview's counts)")
	f.IntVar(&run.Config.Samples, "samples", 5, "timed loads of each page (after one untimed)")
	f.BoolVar(&run.Keep, "keep", false, "keep the temporary data directory")
	return c
}
