package chdb_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/event"
)

// BenchmarkScanEvents reads stored history the way `keymeter rules
// backtest --from/--to` does: every event of the range, in (time, event_id)
// order. The dataset (KEYMETER_SCAN_ROWS rows, default 1M, over 6 hours,
// 2000 keys) is generated inside the engine.
func BenchmarkScanEvents(b *testing.B) {
	rows := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("KEYMETER_SCAN_ROWS")); err == nil && v > 0 {
		rows = v
	}
	db := open(b, fmt.Sprintf("bench_scan_%d", rows))
	defer db.Close(context.Background())
	ctx := context.Background()
	if _, err := db.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	span := 6 * time.Hour
	if err := bench.StoreDataset(ctx, db, rows, 2000, span, io.Discard); err != nil {
		b.Fatal(err)
	}
	slice := 0
	if v, err := strconv.Atoi(os.Getenv("KEYMETER_SCAN_SLICE")); err == nil && v > 0 {
		slice = v
	}
	from, to := time.Now().Add(-span-time.Hour), time.Now().Add(time.Hour)
	var total int
	b.ResetTimer()
	for b.Loop() {
		n := 0
		var last event.Event
		err := db.ScanEvents(ctx, from, to, slice, func(e event.Event) error {
			if n > 0 && (e.Time.Before(last.Time) || e.Time.Equal(last.Time) && e.ID <= last.ID) {
				return fmt.Errorf("out of order: %s %s after %s %s", e.Time, e.ID, last.Time, last.ID)
			}
			last = e
			n++
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if n != rows {
			b.Fatalf("scanned %d events, want %d", n, rows)
		}
		total += n
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "events/s")
}
