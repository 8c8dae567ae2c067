package chdb_test

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/store"
)

// BenchmarkInsert measures InsertEvents (raw rows + rollups) in batches of
// 100k events, for both ways of feeding the rollups. The events' density
// (200k over 6 minutes, 1000 keys) matches `keymeter bench store`'s default
// (2M over an hour).
func BenchmarkInsert(b *testing.B) {
	for _, mode := range []store.RollupMode{store.RollupPreaggregated, store.RollupViews} {
		b.Run(string(mode), func(b *testing.B) {
			db := open(b, fmt.Sprintf("bench_%s_%d", mode, b.N))
			defer db.Close(context.Background())
			ctx := context.Background()
			if _, err := db.Migrate(ctx); err != nil {
				b.Fatal(err)
			}
			var total int
			for b.Loop() {
				r, err := bench.StoreInsert(ctx, bench.StoreConfig{DB: db, Events: 200_000, Batch: 100_000, Rollups: mode, Span: 6 * time.Minute, NoWarmup: true, Output: bench.Output{Progress: io.Discard}})
				if err != nil {
					b.Fatal(err)
				}
				total += r.Events
			}
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
