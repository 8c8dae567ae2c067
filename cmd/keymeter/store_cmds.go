package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
	"github.com/keymeter/keymeter/internal/store/clickhouse"
)

func init() {
	register(newMigrateCmd)
	registerBench(newBenchStoreCmd)
}

// storeFlags select and configure the store; any command that needs the
// store adds them and calls open.
type storeFlags struct {
	Backend  string
	DataDir  string
	DSN      string
	Database string
}

func (f *storeFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.Backend, "store", "chdb", "store backend: chdb (embedded ClickHouse; needs libchdb, see scripts/chdb-lib.sh) or clickhouse (server)")
	if fs.Lookup("data-dir") == nil {
		fs.StringVar(&f.DataDir, "data-dir", "./data", "where state lives; the embedded store uses <data-dir>/clickhouse")
	}
	fs.StringVar(&f.DSN, "clickhouse-dsn", "clickhouse://127.0.0.1:9000/keymeter", "ClickHouse server DSN for --store clickhouse (clickhouse://user:password@host:9000/database)")
	fs.StringVar(&f.Database, "store-database", "", "ClickHouse database (default: keymeter, or the DSN's database)")
}

func (f *storeFlags) validate() error {
	switch f.Backend {
	case "chdb", "clickhouse":
		return nil
	}
	return fmt.Errorf("--store %q: accepted: chdb, clickhouse", f.Backend)
}

func (f *storeFlags) open(ctx context.Context) (*store.DB, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	if f.Backend == "clickhouse" {
		return clickhouse.Open(ctx, clickhouse.Config{DSN: f.DSN, Database: f.Database})
	}
	dir := ""
	if f.DataDir != "" {
		dir = filepath.Join(f.DataDir, "clickhouse")
	}
	return chdb.Open(chdb.Config{DataDir: dir, Database: f.Database})
}

func newMigrateCmd(g *globals) *cobra.Command {
	var sf storeFlags
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the store's schema (ClickHouse tables, rollups, views)",
	}
	sf.add(c.PersistentFlags())
	up := &cobra.Command{
		Use:   "up",
		Short: "Apply pending migrations; a failed one is not recorded and names its statement",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := sf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			applied, err := s.Migrate(cmd.Context())
			for _, v := range applied {
				fmt.Fprintf(cmd.OutOrStdout(), "applied %04d\n", v)
			}
			if err != nil {
				return err
			}
			if len(applied) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "up to date")
			}
			return nil
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "List migrations and whether each is applied",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := sf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			st, err := s.MigrationStatus(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "VERSION\tNAME\tSTATE\tAPPLIED AT")
			for _, m := range st {
				state, at := "pending", ""
				if m.Applied {
					state, at = "applied", m.AppliedAt.Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%04d\t%s\t%s\t%s\n", m.Version, m.Name, state, at)
			}
			return w.Flush()
		},
	}
	c.AddCommand(up, status)
	return c
}

func newBenchStoreCmd(g *globals) *cobra.Command {
	var (
		sf      storeFlags
		events  int
		batch   int
		keys    int
		rollups string
		keep    bool
	)
	c := &cobra.Command{
		Use:   "store",
		Short: "Insert N events through the store (raw rows + rollups): events/s and peak RSS",
		Example: `  keymeter bench store --backend chdb --events 2000000
  keymeter bench store --backend chdb --events 2000000 --rollups both`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if events <= 0 || batch <= 0 || keys <= 0 {
				return fmt.Errorf("--events, --batch and --keys must be positive")
			}
			modes := []store.RollupMode{store.RollupMode(rollups)}
			switch rollups {
			case "both":
				modes = []store.RollupMode{store.RollupViews, store.RollupPreaggregated}
			case string(store.RollupViews), string(store.RollupPreaggregated):
			default:
				return fmt.Errorf("--rollups %q: accepted: preaggregated, views, both", rollups)
			}
			if sf.Backend == "chdb" && !cmd.Flags().Changed("data-dir") {
				d, err := os.MkdirTemp("", "keymeter-bench-store-")
				if err != nil {
					return err
				}
				sf.DataDir = d
				if !keep {
					defer os.RemoveAll(d)
				}
			}
			base := sf.Database
			for _, m := range modes {
				// A fresh database per run, so earlier runs do not count.
				if base == "" {
					sf.Database = fmt.Sprintf("bench_%s_%d", m, time.Now().Unix())
				}
				if err := runBenchStore(cmd.Context(), &sf, m, events, batch, keys); err != nil {
					return err
				}
			}
			return nil
		},
	}
	sf.add(c.Flags())
	c.Flags().StringVar(&sf.Backend, "backend", "chdb", "alias of --store")
	c.Flags().IntVar(&events, "events", 2_000_000, "events to insert")
	c.Flags().IntVar(&batch, "batch", 500_000, "events per insert (one exactly-once bus range)")
	c.Flags().IntVar(&keys, "keys", 1000, "distinct API keys")
	c.Flags().StringVar(&rollups, "rollups", "preaggregated", "how rollups are fed: preaggregated (the store's way), views (materialized view over raw rows), both")
	c.Flags().BoolVar(&keep, "keep", false, "keep the temporary data directory")
	return c
}

func runBenchStore(ctx context.Context, sf *storeFlags, mode store.RollupMode, events, batch, keys int) error {
	s, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	if _, err := s.Migrate(ctx); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench store: backend=%s rollups=%s events=%d batch=%d database=%s\n", sf.Backend, mode, events, batch, s.Database())
	r, err := store.Bench(ctx, s, store.BenchConfig{Events: events, Batch: batch, Keys: keys, Rollups: mode}, os.Stderr)
	if err != nil {
		return err
	}
	if r.Stored != uint64(events) || r.RollupSum != uint64(events) {
		return fmt.Errorf("bench store: stored %d raw events and %d in the rollups, want %d", r.Stored, r.RollupSum, events)
	}
	var sum summary
	sum.add("bench", "store")
	sum.add("backend", sf.Backend)
	sum.add("rollups", string(mode))
	sum.add("events", r.Events)
	sum.add("batch", batch)
	sum.add("events_per_s", fmt.Sprintf("%.0f", r.EventsPerSec))
	sum.add("rss_mb", fmt.Sprintf("%.0f", r.RSSMB))
	// CPU per event is steadier than events/s on a shared machine.
	sum.add("cpu_ns_per_event", fmt.Sprintf("%.0f", float64(r.CPU.Nanoseconds())/float64(r.Events)))
	sum.add("elapsed_s", fmt.Sprintf("%.2f", r.Elapsed.Seconds()))
	sum.print()
	return nil
}
