package backtest_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/backtest"
	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

// The stored-history source gives the backtest the same events, in the
// same order, as the NDJSON of them; its speed is logged (go test -v).
func TestStoreSourceMatchesNDJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("needs chDB")
	}
	if os.Getenv("CHDB_LIB_PATH") == "" {
		t.Skip("CHDB_LIB_PATH not set (make test sets it)")
	}
	ctx := context.Background()
	db, err := chdb.Open(chdb.Config{DataDir: filepath.Join(t.TempDir(), "clickhouse")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	n := 20000
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	var nd bytes.Buffer
	var evs []event.Event
	for i := range n {
		e := event.Event{ID: fmt.Sprintf("e-%06d", i), Time: t0.Add(time.Duration(i) * 7 * time.Millisecond), KeyID: fmt.Sprintf("key_%d", i%97), Project: "p",
			Outcome: event.OutcomeValid, ClientIP: fmt.Sprintf("198.51.%d.%d", i%7, i%250+1), Country: "DE", ASN: 64500, Method: "GET", Route: "/v1/x", Status: 200}
		if i%31 == 0 {
			e.KeyID, e.Project, e.Outcome, e.Status = "", "", event.OutcomeMissing, 401
		}
		evs = append(evs, e)
		nd.Write(e.AppendJSON(nil))
		nd.WriteByte('\n')
	}
	for i := 0; i < n; i += 5000 {
		if err := db.InsertEvents(ctx, fmt.Sprintf("t%d", i), evs[i:min(i+5000, n)]); err != nil {
			t.Fatal(err)
		}
	}
	set, err := detect.LoadPaths(detect.CompileOptions{}, "../../rules")
	if err != nil {
		t.Fatal(err)
	}
	replay := func(src detect.EventSource) ([]string, int64, time.Duration) {
		var ds []string
		start := time.Now()
		rep, err := detect.Backtest(set, src, detect.BacktestOptions{Config: detect.Config{Sink: detect.SinkFunc(func(d *keymeterv1.Decision) {
			ds = append(ds, d.RuleId+" "+d.Group)
		})}})
		if err != nil {
			t.Fatal(err)
		}
		return ds, rep.Events, time.Since(start)
	}
	// Slices of ~1000 events: the 20000 (about 8.6k a minute) come in
	// several reads, so slice boundaries are crossed.
	defer func(v int) { backtest.ScanSliceRows = v }(backtest.ScanSliceRows)
	backtest.ScanSliceRows = 1000
	ss := backtest.NewStoreSource(ctx, db, t0, t0.Add(time.Hour))
	defer ss.Stop()
	fromStore, ns, ds := replay(ss)
	fromFile, nf, df := replay(backtest.NewNDJSONSource(&nd, false, nil))
	if ns != int64(n) || nf != int64(n) {
		t.Fatalf("store gave %d events, NDJSON %d, want %d", ns, nf, n)
	}
	if fmt.Sprint(fromStore) != fmt.Sprint(fromFile) {
		t.Fatalf("decisions differ:\nstore %v\nfile  %v", fromStore, fromFile)
	}
	t.Logf("%d events: store %.0f events/s, NDJSON %.0f events/s", n, float64(n)/ds.Seconds(), float64(n)/df.Seconds())
}

// BenchmarkBacktestSources reads the same events (1M, or
// KEYMETER_SCAN_ROWS, over 6 hours, 2000 keys) from the store and from
// NDJSON through the backtest's sources, without rules: events/s of each,
// measured side by side on the same machine.
func BenchmarkBacktestSources(b *testing.B) {
	if os.Getenv("CHDB_LIB_PATH") == "" {
		b.Skip("CHDB_LIB_PATH not set (make test sets it)")
	}
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("KEYMETER_SCAN_ROWS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	db, err := chdb.Open(chdb.Config{DataDir: filepath.Join(b.TempDir(), "clickhouse")})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close(context.Background())
	if _, err := db.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now().UTC().Add(-7 * time.Hour).Truncate(time.Hour)
	var nd []byte
	batch := make([]event.Event, 100_000)
	for off := 0; off < n; off += len(batch) {
		evs := batch[:min(len(batch), n-off)]
		bench.Events(evs, off, 2000, t0, 6*time.Hour, n)
		for i := range evs {
			nd = evs[i].AppendJSON(nd)
			nd = append(nd, '\n')
		}
		if err := db.InsertEvents(ctx, fmt.Sprintf("b%d", off), evs); err != nil {
			b.Fatal(err)
		}
	}
	drain := func(b *testing.B, src detect.EventSource) {
		got := 0
		for {
			_, err := src.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			got++
		}
		if got != n {
			b.Fatalf("%d events, want %d", got, n)
		}
	}
	// CPU time of the whole process (the engine's threads included): on a
	// shared machine events per CPU-second compare better than wall time.
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b.Run("store", func(b *testing.B) {
		c0 := cpu()
		for b.Loop() {
			ss := backtest.NewStoreSource(ctx, db, t0, t0.Add(7*time.Hour))
			drain(b, ss)
			ss.Stop()
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "events/s")
		b.ReportMetric(float64(n*b.N)/(cpu()-c0).Seconds(), "events/CPU-s")
	})
	b.Run("ndjson", func(b *testing.B) {
		c0 := cpu()
		for b.Loop() {
			drain(b, backtest.NewNDJSONSource(bytes.NewReader(nd), false, nil))
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "events/s")
		b.ReportMetric(float64(n*b.N)/(cpu()-c0).Seconds(), "events/CPU-s")
	})
}
