package clickhouse

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/store"
)

func TestConsistencySettings(t *testing.T) {
	ctx := context.Background()
	if s := consistencySettings(store.Consistent(ctx), true); len(s) != 1 || s["select_sequential_consistency"] != 1 {
		t.Errorf("consistent read: %v", s)
	}
	if s := consistencySettings(store.Quorum(ctx), true); s["insert_quorum"] != "auto" || s["insert_quorum_parallel"] != 0 {
		t.Errorf("quorum write: %v", s)
	}
	if s := consistencySettings(ctx, true); s != nil {
		t.Errorf("plain statement: %v", s)
	}
	if s := consistencySettings(store.Quorum(ctx), false); s != nil {
		t.Errorf("old server: %v", s)
	}
}

// TestConsistencyOnTestServer: statements marked for a cluster run on the
// test server whatever its version: a server older than MinServerVersion
// (Debian's 18.16, which cannot parse insert_quorum = 'auto') is sent no
// such settings, and one new enough takes them (a single server ignores
// them for tables that are not replicated).
func TestConsistencyOnTestServer(t *testing.T) {
	port := os.Getenv("KEYMETER_CLICKHOUSE_TCP_PORT")
	if port == "" {
		port = "19000"
	}
	dsn := os.Getenv("KEYMETER_CLICKHOUSE_DSN")
	if dsn == "" {
		dsn = "clickhouse://127.0.0.1:" + port + "/default?dial_timeout=2s"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, Config{DSN: dsn})
	if err != nil {
		t.Fatalf("no ClickHouse server at %s (scripts/clickhouse-server.sh start): %v", dsn, err)
	}
	defer c.Close()
	v, err := c.ServerVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.replicated != AtLeast(v, MinServerVersion) {
		t.Fatalf("server %s: sends consistency settings = %v", v, c.replicated)
	}
	db := fmt.Sprintf("kmcons_%d", time.Now().UnixNano())
	if err := c.Exec(ctx, "CREATE DATABASE "+db, nil); err != nil {
		t.Fatal(err)
	}
	defer c.Exec(context.Background(), "DROP DATABASE "+db, nil)
	if err := c.Exec(ctx, "CREATE TABLE "+db+".t (x UInt64) ENGINE = MergeTree ORDER BY x", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(store.Quorum(ctx), "INSERT INTO "+db+".t SELECT 1", nil); err != nil {
		t.Fatalf("quorum write on %s: %v", v, err)
	}
	rows, err := c.Query(store.Consistent(ctx), "SELECT count() FROM "+db+".t", nil)
	if err != nil {
		t.Fatalf("consistent read on %s: %v", v, err)
	}
	rows.Close()
	if c.replicated {
		return
	}
	// The settings as sent would break this server: so not sending them matters.
	c.replicated = true
	if err := c.Exec(store.Quorum(ctx), "INSERT INTO "+db+".t SELECT 2", nil); err == nil {
		t.Logf("server %s accepts insert_quorum = 'auto' after all", v)
	} else {
		t.Logf("server %s refuses the cluster settings, as expected: %v", v, err)
	}
}
