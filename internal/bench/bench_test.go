package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

var (
	dataDir string
	nats    *natsbus.Embedded
	seq     atomic.Int64
)

// One embedded NATS server and one chDB data directory for the package:
// chDB allows one data directory per process.
func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "keymeter-bench-test-")
	if err != nil {
		panic(err)
	}
	dataDir = d
	nats, err = natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: filepath.Join(d, "nats")})
	if err != nil {
		panic(err)
	}
	code := m.Run()
	nats.Shutdown()
	os.RemoveAll(d)
	os.Exit(code)
}

func newBus(t *testing.T) *natsbus.Bus {
	t.Helper()
	b, err := natsbus.New(context.Background(), natsbus.Config{Prefix: fmt.Sprintf("bench%d", seq.Add(1)), Partitions: 4}, natsbus.WithEmbedded(nats))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

// openStore fails (never skips) when libchdb is missing: CI has it.
func openStore(t *testing.T, database string) *store.DB {
	t.Helper()
	db, err := chdb.Open(chdb.Config{DataDir: filepath.Join(dataDir, "clickhouse"), Database: database})
	if err != nil {
		t.Fatalf("open chdb (CHDB_LIB_PATH=%q): %v", os.Getenv("CHDB_LIB_PATH"), err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	return db
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func figures(t *testing.T, line string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range strings.Fields(line) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			t.Fatalf("summary field %q is not name=value: %s", f, line)
		}
		out[k] = v
	}
	return out
}

func TestSummaryAndPercentiles(t *testing.T) {
	var s Summary
	s.Add("bench", "x")
	s.Add("p99_ms", 1.25)
	s.Add("n", 3)
	if got := s.String(); got != "bench=x p99_ms=1.2 n=3" {
		t.Fatalf("summary %q", got)
	}
	d := []time.Duration{5 * time.Millisecond, time.Millisecond, 3 * time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond}
	if p50, p100 := PercentileMS(d, 0.5), PercentileMS(d, 1); p50 != 3 || p100 != 5 {
		t.Fatalf("p50 %v p100 %v", p50, p100)
	}
	if PercentileMS(nil, 0.99) != 0 {
		t.Fatal("percentile of nothing")
	}
}

func TestRunBus(t *testing.T) {
	var out bytes.Buffer
	r, err := RunBus(ctx(t), BusConfig{Bus: newBus(t), Backend: "nats", Events: 5000, Batch: 100, Output: Output{Out: &out, Progress: &bytes.Buffer{}}})
	if err != nil {
		t.Fatal(err)
	}
	f := figures(t, out.String())
	if r.Consumed != 5000 || r.Duplicated != 0 || f["lost"] != "0" || f["duplicated"] != "0" || f["events"] != "5000" || f["bench"] != "bus" {
		t.Fatalf("%+v\n%s", r, out.String())
	}
	if _, err := RunBus(ctx(t), BusConfig{Bus: newBus(t), Events: 0, Batch: 1}); err == nil {
		t.Fatal("0 events accepted")
	}
}

func TestRunPipeline(t *testing.T) {
	var out bytes.Buffer
	st := openStore(t, fmt.Sprintf("bench_pipeline_%d", seq.Add(1)))
	if _, err := st.Migrate(ctx(t)); err != nil {
		t.Fatal(err)
	}
	r, err := RunPipeline(ctx(t), PipelineConfig{Bus: newBus(t), Backend: "nats", Store: st, StoreName: "chdb", Events: 3000, Batch: 100, Keys: 10,
		BlockSize: 1000, Output: Output{Out: &out, Progress: &bytes.Buffer{}}})
	if err != nil {
		t.Fatal(err)
	}
	if f := figures(t, out.String()); r.Distinct != 3000 || r.Stored != 3000 || f["lost"] != "0" || f["duplicated"] != "0" || f["ratio"] != "" {
		t.Fatalf("%+v\n%s", r, out.String())
	}
}

func TestRunPipelineCompareStore(t *testing.T) {
	var out bytes.Buffer
	st := openStore(t, fmt.Sprintf("bench_pipeline_%d", seq.Add(1)))
	if _, err := st.Migrate(ctx(t)); err != nil {
		t.Fatal(err)
	}
	r, err := RunPipeline(ctx(t), PipelineConfig{Bus: newBus(t), Backend: "nats", Store: st, StoreName: "chdb", Events: 3000, Batch: 100, Keys: 10,
		BlockSize: 1000, CompareStore: true, Output: Output{Out: &out, Progress: &bytes.Buffer{}}})
	if err != nil {
		t.Fatal(err)
	}
	f := figures(t, out.String())
	if r.Distinct != 3000 || f["lost"] != "0" || f["duplicated"] != "0" || r.StoreEventsPerSec <= 0 || f["ratio"] == "" || f["store_events_per_s"] == "" ||
		f["cpu_ns_per_event"] == "" || f["store_cpu_ns_per_event"] == "" || f["rss_mb"] == "" {
		t.Fatalf("%+v\n%s", r, out.String())
	}
	// The store-alone phase went to its own database: the pipeline's holds only its own events.
	if n, err := st.Count(ctx(t), "requests"); err != nil || n != 3000 {
		t.Fatalf("pipeline database holds %d rows (%v), want 3000", n, err)
	}
}

func TestRunStoreAndQuery(t *testing.T) {
	var out bytes.Buffer
	o := Output{Out: &out, Progress: &bytes.Buffer{}}
	err := RunStore(ctx(t), StoreConfig{DB: openStore(t, fmt.Sprintf("bench_store_%d", seq.Add(1))), Backend: "chdb", Events: 20_000, Batch: 5000,
		Keys: 50, Rollups: store.RollupPreaggregated, Writers: 2, Queries: 5, Output: o})
	if err != nil {
		t.Fatal(err)
	}
	if f := figures(t, out.String()); f["events"] != "20000" || f["usage_p99_ms"] == "" {
		t.Fatalf("%s", out.String())
	}
	out.Reset()
	err = RunStoreQuery(ctx(t), StoreQueryConfig{DB: openStore(t, fmt.Sprintf("bench_query_%d", seq.Add(1))), Backend: "chdb", Rows: 20_000, Keys: 50,
		Span: time.Hour, Queries: 5, Output: o})
	if err != nil {
		t.Fatal(err)
	}
	if f := figures(t, out.String()); f["rows"] != "20000" || f["logs_p99_ms"] == "" {
		t.Fatalf("%s", out.String())
	}
}

func TestRunProxyCPUFigures(t *testing.T) {
	var out bytes.Buffer
	err := RunProxy(ctx(t), ProxyConfig{Bus: newBus(t), Backend: "nats", Connections: 4, Duration: 300 * time.Millisecond, Rounds: 1, Keys: 20,
		DataDir: t.TempDir(), Output: Output{Out: &out, Progress: &bytes.Buffer{}}})
	if err != nil {
		t.Fatal(err)
	}
	f := figures(t, out.String())
	for _, k := range []string{"cpu_ns_per_request", "bare_cpu_ns_per_request", "verifier_cpu_ns_per_request", "auth_cpu_ns_per_request",
		"pooled_bare_cpu_ns_per_request", "verifier_vs_pooled_cpu_ns_per_request", "pooled_ratio"} {
		if f[k] == "" || f[k] == "0" {
			t.Fatalf("%s missing or 0:\n%s", k, out.String())
		}
	}
	if f["errors"] != "0" {
		t.Fatalf("errors:\n%s", out.String())
	}
}

// TestRunProxyNginx runs Debian's nginx (make deps installs nginx-light;
// its absence fails the test) with the shipped config, alone and with
// keymeter forward-auth: every request through both answers 200.
func TestRunProxyNginx(t *testing.T) {
	var out bytes.Buffer
	err := RunProxy(ctx(t), ProxyConfig{Bus: newBus(t), Backend: "nats", Connections: 4, Duration: 300 * time.Millisecond, Rounds: 1, Keys: 20,
		DataDir: t.TempDir(), Nginx: true,
		Output: Output{Out: &out, Progress: &bytes.Buffer{}}})
	if err != nil {
		t.Fatal(err)
	}
	f := figures(t, out.String())
	if f["errors"] != "0" || f["nginx_requests_per_s"] == "" || f["nginx_requests_per_s"] == "0.0" || f["nginx_auth_requests_per_s"] == "0.0" || f["nginx_auth_ratio"] == "" {
		t.Fatalf("%s", out.String())
	}
}
