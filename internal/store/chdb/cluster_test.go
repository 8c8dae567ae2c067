package chdb_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/keymeter/keymeter/internal/store"
)

// Every statement of the generated cluster schema parses in ClickHouse
// (formatQuery parses without running: a single node has no cluster to
// run ON CLUSTER statements on).
func TestClusterSQLParses(t *testing.T) {
	db := open(t, "cluster_sql")
	defer db.Close(context.Background())
	sql, err := store.ClusterSQL(store.Migrations(), "{cluster}", "keymeter")
	if err != nil {
		t.Fatal(err)
	}
	sts := store.SplitStatements(sql)
	if len(sts) < 10 {
		t.Fatalf("%d statements", len(sts))
	}
	for _, st := range sts {
		rows, err := db.Conn().Query(context.Background(), "SELECT formatQuery({q:String})", store.Params{}.Str("q", st))
		if err != nil {
			t.Errorf("%v\n%s", err, st)
			continue
		}
		rows.Close()
	}
}

// migrate --print without --cluster gives the schema Migrate creates.
func TestMigrationsSQLIsTheMigratedSchema(t *testing.T) {
	ctx := context.Background()
	printed := open(t, "printed_schema")
	defer printed.Close(context.Background())
	for _, st := range store.SplitStatements(store.MigrationsSQL(store.Migrations(), "printed_schema")) {
		if err := printed.Conn().Exec(ctx, st, nil); err != nil {
			t.Fatalf("%v\n%s", err, st)
		}
	}
	migrated := open(t, "migrated_schema")
	defer migrated.Close(context.Background())
	if _, err := migrated.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	tables := func(db *store.DB) []string {
		rows, err := db.Conn().Query(ctx, "SELECT name, engine_full FROM system.tables WHERE database = {db:String} AND name != 'schema_migrations' ORDER BY name",
			store.Params{}.Str("db", db.Database()))
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var name, engine string
			if err := rows.Scan(&name, &engine); err != nil {
				t.Fatal(err)
			}
			out = append(out, name+" "+strings.ReplaceAll(engine, db.Database(), "DB"))
		}
		return out
	}
	a, b := tables(printed), tables(migrated)
	if len(a) < 5 || !slices.Equal(a, b) {
		t.Fatalf("printed schema:\n%s\nmigrated schema:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
}
