package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/storeopen"
)

func init() {
	register(newMigrateCmd)
}

// storeFlags select and configure the store (storeopen.Flags).
type storeFlags = storeopen.Flags

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
	sf.Bind(c.PersistentFlags())
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
			s, err := sf.Open(cmd.Context())
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
			s, err := sf.Open(cmd.Context())
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
