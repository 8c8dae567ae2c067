package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/bench"
)

func init() { registerBench(newBenchConsoleCmd) }

// bench console: the server time of every console page over a generated
// history (the harness is bench.RunConsole).
func newBenchConsoleCmd(g *globals) *cobra.Command {
	var (
		sf   storeFlags
		cfg  bench.ConsoleConfig
		keep bool
	)
	c := &cobra.Command{
		Use:   "console",
		Short: "Server time of each console page over a generated history (default 100M events, 30 days, 100k keys; target 200 ms)",
		Example: `  keymeter bench console                                  # 100M rows: the dataset builds first
  keymeter bench console --rows 10000000 --keys 10000
  keymeter bench console --data-dir /tmp/km --keep --store-database console100m   # keep the dataset for another run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			given := ""
			if cmd.Flags().Changed("data-dir") {
				given = sf.DataDir
			}
			dir, cleanup, err := bench.DataDir(given, keep, "console")
			if err != nil {
				return err
			}
			defer cleanup()
			sf.DataDir, cfg.DataDir, cfg.Backend = dir, dir, sf.Backend
			if sf.Database == "" {
				sf.Database = "bench_console"
			}
			db, err := sf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			cfg.DB = db
			_, err = bench.RunConsole(cmd.Context(), cfg)
			return err
		},
	}
	f := c.Flags()
	sf.add(f)
	f.IntVar(&cfg.Rows, "rows", 100_000_000, "events in the generated history")
	f.IntVar(&cfg.Keys, "keys", 100_000, "distinct keys in the history")
	f.DurationVar(&cfg.Span, "span", 720*time.Hour, "time the history covers, ending now")
	f.IntVar(&cfg.Samples, "samples", 5, "timed loads of each page (after one untimed)")
	f.BoolVar(&keep, "keep", false, "keep the temporary data directory")
	return c
}
