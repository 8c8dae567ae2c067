package clickhouse_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/clickhouse"
	"github.com/keymeter/keymeter/internal/store/storetest"
)

// The server comes from scripts/clickhouse-server.sh start (CI runs it).
// A missing server fails the tests: it is never a skip.
func dsn() string {
	if d := os.Getenv("KEYMETER_CLICKHOUSE_DSN"); d != "" {
		return d
	}
	port := os.Getenv("KEYMETER_CLICKHOUSE_TCP_PORT")
	if port == "" {
		port = "19000"
	}
	return "clickhouse://127.0.0.1:" + port + "/default?dial_timeout=2s"
}

func dial(t *testing.T) *clickhouse.Conn { return dialWith(t, clickhouse.Config{}) }

// dialWith dials with cfg's Timeout (default 20s) and Retries.
func dialWith(t *testing.T, cfg clickhouse.Config) *clickhouse.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg.DSN = dsn()
	if cfg.Timeout == 0 {
		cfg.Timeout = 20 * time.Second
	}
	c, err := clickhouse.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("no ClickHouse server at %s (start one with scripts/clickhouse-server.sh start): %v", dsn(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestTypesOnAnyServer: batch insert and scan of the types every supported
// server version has, including 18.16.
func TestTypesOnAnyServer(t *testing.T) {
	c := dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := c.Driver()
	db := fmt.Sprintf("kmtest_%d", time.Now().UnixNano())
	if err := c.Exec(ctx, "CREATE DATABASE "+db, nil); err != nil {
		t.Fatal(err)
	}
	defer c.Exec(context.Background(), "DROP DATABASE "+db, nil)
	err := c.Exec(ctx, `CREATE TABLE `+db+`.t (id UInt64, s String, ts DateTime, n Nullable(String), u UUID, lc LowCardinality(String), a Array(String))
ENGINE = MergeTree ORDER BY id`, nil)
	if err != nil {
		t.Fatal(err)
	}
	const rows = 20000
	b, err := d.PrepareBatch(ctx, "INSERT INTO "+db+".t (id, s, ts, n, u, lc, a)")
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ids := make([]uuid.UUID, rows)
	for i := range rows {
		var n *string
		if i%3 == 0 {
			s := "n" + strconv.Itoa(i)
			n = &s
		}
		ids[i] = uuid.New()
		if err := b.Append(uint64(i), "it's \\ \n"+strconv.Itoa(i), base.Add(time.Duration(i)*time.Second), n, ids[i], "lc"+strconv.Itoa(i%5), []string{"x", strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	r, err := d.Query(ctx, "SELECT id, s, ts, n, u, lc, a FROM "+db+".t ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	i := 0
	for r.Next() {
		var (
			id uint64
			s  string
			ts time.Time
			n  *string
			u  uuid.UUID
			lc string
			a  []string
		)
		if err := r.Scan(&id, &s, &ts, &n, &u, &lc, &a); err != nil {
			t.Fatal(err)
		}
		if id != uint64(i) || s != "it's \\ \n"+strconv.Itoa(i) || !ts.Equal(base.Add(time.Duration(i)*time.Second)) ||
			(i%3 == 0) != (n != nil) || u != ids[i] || lc != "lc"+strconv.Itoa(i%5) || len(a) != 2 || a[1] != strconv.Itoa(i) {
			t.Fatalf("row %d: %v %q %v %v %v %q %v", i, id, s, ts, n, u, lc, a)
		}
		i++
	}
	if r.Err() != nil || i != rows {
		t.Fatalf("scanned %d rows, err %v", i, r.Err())
	}
	// The store's Rows interface on the same connection.
	sr, err := c.Query(ctx, "SELECT toUInt64(count()), toString(max(id)) FROM "+db+".t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Close()
	var cnt uint64
	var maxID string
	if !sr.Next() || sr.Scan(&cnt, &maxID) != nil || cnt != rows || maxID != strconv.Itoa(rows-1) {
		t.Fatalf("count %d max %q", cnt, maxID)
	}
}

// TestReconnect: the server is killed and restarted; the next call on the
// same store connection succeeds after retrying with backoff. The retries
// outlast the restart however slow (the default 5 back off ~3 s in all; the
// start script allows the server 10 s to answer, and a loaded machine may
// use them).
func TestReconnect(t *testing.T) {
	c := dialWith(t, clickhouse.Config{Retries: 10, Timeout: time.Minute})
	ctx := context.Background()
	one := func() error {
		r, err := c.Query(ctx, "SELECT toUInt64(1)", nil)
		if err != nil {
			return err
		}
		defer r.Close()
		var v uint64
		if !r.Next() {
			return fmt.Errorf("no row: %v", r.Err())
		}
		return r.Scan(&v)
	}
	if err := one(); err != nil {
		t.Fatal(err)
	}
	script := "../../../scripts/clickhouse-server.sh"
	if out, err := exec.Command(script, "kill").CombinedOutput(); err != nil {
		t.Fatalf("kill: %v\n%s", err, out)
	}
	// Restart in the background while the query is already retrying.
	done := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		out, err := exec.Command(script, "start").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%v: %s", err, out)
		}
		done <- err
	}()
	t0 := time.Now()
	err := one()
	if serr := <-done; serr != nil {
		t.Fatalf("restart: %v", serr)
	}
	if err != nil {
		t.Fatalf("query after kill+restart: %v", err)
	}
	t.Logf("reconnected after %v", time.Since(t0).Round(time.Millisecond))
}

// TestConformance runs the full store suite when the server is new enough.
func TestConformance(t *testing.T) {
	c := dial(t)
	v, err := c.ServerVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !clickhouse.AtLeast(v, clickhouse.MinServerVersion) {
		if _, err := clickhouse.Open(context.Background(), clickhouse.Config{DSN: dsn()}); !errors.Is(err, clickhouse.ErrServerTooOld) {
			t.Fatalf("Open on %s: err = %v, want ErrServerTooOld", v, err)
		}
		t.Skipf("the full store suite needs ClickHouse %s or newer; server at %s is %s (it has no {x:Type} parameters, DateTime64, TTL or insert_deduplication_token). The suite runs in full on chDB; connection handling and types are tested above.", clickhouse.MinServerVersion, dsn(), v)
	}
	storetest.Run(t, func(t *testing.T, database string) store.Store {
		s, err := clickhouse.Open(context.Background(), clickhouse.Config{DSN: dsn(), Database: database})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
