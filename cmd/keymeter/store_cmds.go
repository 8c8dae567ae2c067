package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/storeopen"
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

// open opens the store; an unset --data-dir of the store flags is the one
// defined first on the command (bus, spool).
func (f *storeFlags) open(ctx context.Context) (*store.DB, error) {
	c := storeopen.Config{Backend: f.Backend, DataDir: f.DataDir, DSN: f.DSN, Database: f.Database}
	if f.fs != nil && c.DataDir == "" {
		if fl := f.fs.Lookup("data-dir"); fl != nil {
			c.DataDir = fl.Value.String()
		}
	}
	return storeopen.Open(ctx, c)
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
			return store.WriteSchema(cmd.OutOrStdout(), sf.Database, cluster)
		},
	}
	sf.add(c.PersistentFlags())
	c.Flags().BoolVar(&printSQL, "print", false, "print the schema's SQL instead of applying it (to review, or to apply by hand)")
	c.Flags().StringVar(&cluster, "cluster", "", "with --print: the schema for this ClickHouse cluster (ReplicatedMergeTree + Distributed, ON CLUSTER); '{cluster}' keeps the server macro")
	c.AddCommand(migrateUpCmd(&sf), migrateStatusCmd(&sf))
	return c
}

func migrateUpCmd(sf *storeFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "up",
		Short: "Apply pending migrations; a failed one is not recorded and names its statement",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := sf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close(context.Background())
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
}

func migrateStatusCmd(sf *storeFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "List migrations and whether each is applied",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := sf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close(context.Background())
			st, err := s.MigrationStatus(cmd.Context())
			if err != nil {
				return err
			}
			return store.WriteMigrationStatus(cmd.OutOrStdout(), st)
		},
	}
}

// benchStoreFlags are the flags of bench store.
type benchStoreFlags struct {
	sf   storeFlags
	run  bench.StoreRun
	keep bool
}

func newBenchStoreCmd(g *globals) *cobra.Command {
	o := &benchStoreFlags{}
	c := &cobra.Command{
		Use:   "store",
		Short: "Insert N events through the store (raw rows + rollups): events/s and peak RSS",
		Example: `  keymeter bench store --backend chdb --events 2000000
  keymeter bench store --backend chdb --events 2000000 --rollups both`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := o.run.Modes(); err != nil {
				return err
			}
			if o.sf.Backend == "chdb" { // a temporary data dir unless --data-dir is given
				given := ""
				if cmd.Flags().Changed("data-dir") {
					given = o.sf.DataDir
				}
				dir, cleanup, err := bench.DataDir(given, o.keep, "store")
				if err != nil {
					return err
				}
				defer cleanup()
				o.sf.DataDir = dir
			}
			o.run.Backend, o.run.Database = o.sf.Backend, o.sf.Database
			o.run.Open = func(ctx context.Context, db string) (*store.DB, error) {
				o.sf.Database = db
				return o.sf.open(ctx)
			}
			return o.run.Run(cmd.Context())
		},
	}
	f := c.Flags()
	o.sf.add(f)
	f.StringVar(&o.sf.Backend, "backend", "chdb", "alias of --store")
	f.IntVar(&o.run.Events, "events", 2_000_000, "events to insert")
	f.IntVar(&o.run.Batch, "batch", 500_000, "events per insert (one exactly-once bus range)")
	f.IntVar(&o.run.Keys, "keys", 1000, "distinct API keys")
	f.BoolVar(&o.run.NoWarmup, "no-warmup", false, "skip the untimed warm-up batch (measures a cold process)")
	f.IntVar(&o.run.Writers, "writers", 2, "concurrent InsertEvents callers (an aggregator inserts its partitions concurrently)")
	f.StringVar(&o.run.Rollups, "rollups", "preaggregated", "how rollups are fed: preaggregated (the store's way), views (materialized view over raw rows), both")
	f.BoolVar(&o.keep, "keep", false, "keep the temporary data directory")
	f.DurationVar(&o.run.Span, "span", time.Hour, "time the events cover, ending now (720h for a 30-day query dataset)")
	f.IntVar(&o.run.QueryRows, "query-rows", 0, "instead of the insert benchmark: generate this many raw rows in the engine over --span and measure queries (e.g. 100000000 with --span 720h --keys 10000)")
	f.IntVar(&o.run.Queries, "queries", 0, "after inserting, run this many per-key 30-day usage queries and filtered log pages (p50/p99)")
	return c
}
