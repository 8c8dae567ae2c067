package store

import (
	"cmp"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteSchema writes the SQL of every migration for database (default
// keymeter): the single-server schema, or with cluster the ClickHouse
// cluster variant of ClusterSQL. keymeter migrate --print.
func WriteSchema(w io.Writer, database, cluster string) error {
	db := cmp.Or(database, "keymeter")
	if cluster == "" {
		_, err := fmt.Fprint(w, MigrationsSQL(Migrations(), db))
		return err
	}
	sql, err := ClusterSQL(Migrations(), cluster, db)
	if err != nil {
		return fmt.Errorf("--cluster: %w", err)
	}
	_, err = fmt.Fprint(w, sql)
	return err
}

// WriteMigrationStatus prints migrations and whether each is applied, as a
// table. keymeter migrate status.
func WriteMigrationStatus(w io.Writer, st []MigrationState) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tNAME\tSTATE\tAPPLIED AT")
	for _, m := range st {
		state, at := "pending", ""
		if m.Applied {
			state, at = "applied", m.AppliedAt.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%04d\t%s\t%s\t%s\n", m.Version, m.Name, state, at)
	}
	return tw.Flush()
}
