package store

import (
	"flag"
	"os"
	"strings"
	"testing"
	"time"
)

var updateCluster = flag.Bool("update-cluster-sql", false, "rewrite deploy/clickhouse/cluster.sql")

const clusterFile = "../../deploy/clickhouse/cluster.sql"

// The committed cluster schema is what the migrations generate: it cannot
// drift from the single-node schema.
func TestClusterSQLIsGenerated(t *testing.T) {
	got, err := ClusterSQL(Migrations(), "{cluster}", "keymeter")
	if err != nil {
		t.Fatal(err)
	}
	if *updateCluster {
		if err := os.WriteFile(clusterFile, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(clusterFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != got {
		t.Fatalf("%s is not what the migrations generate: run make cluster-sql and commit it", clusterFile)
	}
}

func TestClusterSQLCoversEveryMigration(t *testing.T) {
	sql, err := ClusterSQL(Migrations(), "prod", "km")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"CREATE TABLE IF NOT EXISTS km.requests_local ON CLUSTER 'prod'",
		"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/km/requests', '{replica}')",
		"ENGINE = Distributed('prod', km, requests_local, cityHash64(key_id))",
		"SETTINGS replicated_deduplication_window = 10000, ttl_only_drop_parts = 1",
		"CREATE MATERIALIZED VIEW IF NOT EXISTS km.rollup_input_mv ON CLUSTER 'prod' TO km.requests_1m_local AS",
		"FROM km.rollup_input_local",
		"ENGINE = Null",
		"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/km/ingest_intents', '{shard}-{replica}', version)",
		"CREATE TABLE IF NOT EXISTS km.billing_snapshots ON CLUSTER 'prod'",
		"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/km/billing_snapshots', '{shard}-{replica}', closed_at)",
		"ALTER TABLE km.ingest_intents ON CLUSTER 'prod' MODIFY TTL toDateTime(updated) + INTERVAL 30 DAY",
		"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/km/schema_migrations', '{shard}-{replica}')",
	} {
		if !strings.Contains(sql, want) {
			t.Errorf("cluster SQL lacks %q", want)
		}
	}
	for _, m := range Migrations() {
		if !strings.Contains(sql, "'"+m.Name+"', now64(3)") {
			t.Errorf("migration %04d_%s is not recorded in schema_migrations", m.Version, m.Name)
		}
	}
	if strings.Contains(sql, "{db}") || strings.Contains(sql, "non_replicated") || strings.Contains(sql, "ENGINE = MergeTree") {
		t.Errorf("single-node leftovers in the cluster SQL:\n%s", sql)
	}
}

// A sharded table's new column reaches its Distributed table too; an
// unknown kind of statement is refused rather than left out.
func TestClusterSQLStatements(t *testing.T) {
	migs := []Migration{{Version: 1, Name: "x", Statements: []string{"ALTER TABLE {db}.requests ADD COLUMN IF NOT EXISTS region String"}}}
	sql, err := ClusterSQL(migs, "c", "k")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ALTER TABLE k.requests_local ON CLUSTER 'c' ADD COLUMN", "ALTER TABLE k.requests ON CLUSTER 'c' ADD COLUMN"} {
		if !strings.Contains(sql, want) {
			t.Errorf("lacks %q:\n%s", want, sql)
		}
	}
	for _, st := range []string{"INSERT INTO {db}.keys VALUES (1)", "CREATE TABLE IF NOT EXISTS {db}.t (a UInt8) ENGINE = Log", "CREATE TABLE IF NOT EXISTS {db}.t\n(\n a UInt8\n)\nENGINE = Log"} {
		if _, err := ClusterSQL([]Migration{{Version: 1, Name: "x", Statements: []string{st}}}, "c", "k"); err == nil {
			t.Errorf("%q accepted", st)
		}
	}
	if _, err := ClusterSQL(migs, "c'--", "k"); err == nil {
		t.Error("a quote in the cluster name accepted")
	}
}

func TestWriteMigrationStatus(t *testing.T) {
	var b strings.Builder
	at := time.Date(2026, 11, 1, 2, 3, 4, 0, time.UTC)
	if err := WriteMigrationStatus(&b, []MigrationState{{Version: 1, Name: "init", Applied: true, AppliedAt: at}, {Version: 2, Name: "next"}}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"VERSION", "0001     init  applied  2026-11-01T02:03:04Z", "0002     next  pending"} {
		if !strings.Contains(out, want) {
			t.Errorf("status %q lacks %q", out, want)
		}
	}
}
