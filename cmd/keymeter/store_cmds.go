package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/bench"
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
	fs       *pflag.FlagSet
}

// add defines the store flags; --data-dir is shared with whatever else on
// the command defines it first (bus, spool).
func (f *storeFlags) add(fs *pflag.FlagSet) {
	f.fs = fs
	fs.StringVar(&f.Backend, "store", "chdb", "store backend: chdb (embedded ClickHouse; needs libchdb, see scripts/chdb-lib.sh) or clickhouse (server)")
	if fs.Lookup("data-dir") == nil {
		fs.StringVar(&f.DataDir, "data-dir", "./data", "where state lives; the embedded store uses <data-dir>/clickhouse")
	}
	fs.StringVar(&f.DSN, "clickhouse-dsn", "clickhouse://127.0.0.1:9000/keymeter", "ClickHouse server DSN for --store clickhouse (clickhouse://user:password@host:9000/database); with a password prefer KEYMETER_CLICKHOUSE_DSN: arguments show in ps")
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
	dir := f.DataDir
	if f.fs != nil && dir == "" {
		if fl := f.fs.Lookup("data-dir"); fl != nil {
			dir = fl.Value.String()
		}
	}
	if dir != "" {
		dir = filepath.Join(dir, "clickhouse")
	}
	return chdb.Open(chdb.Config{DataDir: dir, Database: f.Database})
}

func newMigrateCmd(g *globals) *cobra.Command {
	var sf storeFlags
	var (
		printSQL bool
		cluster  string
	)
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the store's schema (ClickHouse tables, rollups, views)",
		Example: `  keymeter migrate up
  keymeter migrate --print --cluster '{cluster}' > deploy/clickhouse/cluster.sql   # make cluster-sql`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !printSQL {
				return cmd.Help()
			}
			db := cmp.Or(sf.Database, "keymeter")
			if cluster == "" {
				_, err := fmt.Fprint(cmd.OutOrStdout(), store.MigrationsSQL(store.Migrations(), db))
				return err
			}
			sql, err := store.ClusterSQL(store.Migrations(), cluster, db)
			if err != nil {
				return fmt.Errorf("--cluster: %w", err)
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), sql)
			return err
		},
	}
	sf.add(c.PersistentFlags())
	c.Flags().BoolVar(&printSQL, "print", false, "print the schema's SQL instead of applying it (to review, or to apply by hand)")
	c.Flags().StringVar(&cluster, "cluster", "", "with --print: the schema for this ClickHouse cluster (ReplicatedMergeTree + Distributed, ON CLUSTER); '{cluster}' keeps the server macro")
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
		span    time.Duration
		queries int
		qrows   int
		writers int
		noWarm  bool
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
			if qrows > 0 {
				if sf.Database == "" {
					sf.Database = fmt.Sprintf("bench_query_%d", qrows)
				}
				s, err := sf.open(cmd.Context())
				if err != nil {
					return err
				}
				defer s.Close()
				return bench.RunStoreQuery(cmd.Context(), bench.StoreQueryConfig{DB: s, Backend: sf.Backend, Rows: qrows, Keys: keys, Span: span, Queries: max(queries, 200)})
			}
			base := sf.Database
			for _, m := range modes {
				// A fresh database per run, so earlier runs do not count.
				if base == "" {
					sf.Database = fmt.Sprintf("bench_%s_%d", m, time.Now().Unix())
				}
				s, err := sf.open(cmd.Context())
				if err != nil {
					return err
				}
				err = bench.RunStore(cmd.Context(), bench.StoreConfig{DB: s, Backend: sf.Backend, Events: events, Batch: batch, Keys: keys, Rollups: m,
					Span: span, Queries: queries, Writers: writers, NoWarmup: noWarm})
				s.Close()
				if err != nil {
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
	c.Flags().BoolVar(&noWarm, "no-warmup", false, "skip the untimed warm-up batch (measures a cold process)")
	c.Flags().IntVar(&writers, "writers", 2, "concurrent InsertEvents callers (an aggregator inserts its partitions concurrently)")
	c.Flags().StringVar(&rollups, "rollups", "preaggregated", "how rollups are fed: preaggregated (the store's way), views (materialized view over raw rows), both")
	c.Flags().BoolVar(&keep, "keep", false, "keep the temporary data directory")
	c.Flags().DurationVar(&span, "span", time.Hour, "time the events cover, ending now (720h for a 30-day query dataset)")
	c.Flags().IntVar(&qrows, "query-rows", 0, "instead of the insert benchmark: generate this many raw rows in the engine over --span and measure queries (e.g. 100000000 with --span 720h --keys 10000)")
	c.Flags().IntVar(&queries, "queries", 0, "after inserting, run this many per-key 30-day usage queries and filtered log pages (p50/p99)")
	return c
}
