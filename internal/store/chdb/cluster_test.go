package chdb_test

import (
	"context"
	"testing"

	"github.com/keymeter/keymeter/internal/store"
)

// Every statement of the generated cluster schema parses in ClickHouse
// (formatQuery parses without running: a single node has no cluster to
// run ON CLUSTER statements on).
func TestClusterSQLParses(t *testing.T) {
	db := open(t, "cluster_sql")
	defer db.Close()
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
