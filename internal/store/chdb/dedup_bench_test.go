package chdb_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/store/storetest"
)

// BenchmarkStoredEventIDs measures the aggregator's lookup of a resent or
// replayed block: 100k events (1000 keys, one minute), half of them stored,
// against a table of 1M events over an hour (the lookup's time bound keeps
// it to the block's minute).
func BenchmarkStoredEventIDs(b *testing.B) {
	db := open(b, fmt.Sprintf("bench_dedup_%d", time.Now().UnixNano()%1e9))
	defer db.Close(context.Background())
	ctx := context.Background()
	if _, err := db.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	start := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	all := storetest.Events("e", 1_000_000, start, time.Hour, 1000)
	for i := 0; i < len(all); i += 100_000 {
		if err := db.InsertEvents(ctx, fmt.Sprintf("bench-%d", i), all[i:i+100_000]); err != nil {
			b.Fatal(err)
		}
	}
	// A block of one minute's 100k events, the second half never stored.
	block := storetest.Events("b", 100_000, start.Add(30*time.Minute), time.Minute, 1000)
	if err := db.InsertEvents(ctx, "bench-block", block[:50_000]); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		got, err := db.StoredEventIDs(ctx, block)
		if err != nil {
			b.Fatal(err)
		}
		if len(got) != 50_000 {
			b.Fatalf("found %d stored, want 50000", len(got))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/lookup")
}
