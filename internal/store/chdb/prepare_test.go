package chdb_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/storetest"
)

// An insert encoded ahead (PrepareInsert) stores the same rows and rollup
// as a plain one, is deduplicated by its token like one, and leaves no
// temporary file behind; a prepared insert never made is dropped.
func TestPreparedInsert(t *testing.T) {
	db := open(t, "prepared")
	defer db.Close(context.Background())
	ctx := context.Background()
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now().UTC().Add(-time.Hour).Truncate(time.Minute)
	a := storetest.Events("pa", 3000, start, 30*time.Minute, 5)
	b := storetest.Events("pb", 2000, start, 30*time.Minute, 5)
	db.PrepareInsert("tok-a", a)
	if err := db.InsertEvents(ctx, "tok-a", a); err != nil {
		t.Fatal(err)
	}
	db.PrepareInsert("tok-a", a) // the replay after a crash: prepared again, dropped by its token
	if err := db.InsertEvents(ctx, "tok-a", a); err != nil {
		t.Fatal(err)
	}
	db.PrepareInsert("tok-never", b[:10]) // replaced before it is inserted
	db.PrepareInsert("tok-b", b)
	if err := db.InsertEvents(ctx, "tok-b", b[:1000]); err != nil { // not the prepared slice: inserted as given
		t.Fatal(err)
	}
	if n, err := db.Count(ctx, "requests"); err != nil || n != 4000 {
		t.Fatalf("requests = %d (err %v), want 4000", n, err)
	}
	pts, err := db.Usage(ctx, store.UsageQuery{Project: "p1",
		From: start.Add(-time.Hour), To: start.Add(2 * time.Hour), Granularity: store.Day})
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, p := range pts {
		total += p.Requests
	}
	if total != 4000 {
		t.Fatalf("rollup counts %d requests, want 4000 (each rollup once)", total)
	}
	db.Close(context.Background())
	left, _ := filepath.Glob(filepath.Join(dataDir, "tmp-insert", "insert-*.bin"))
	if len(left) != 0 {
		t.Fatalf("temporary insert files left: %v", left)
	}
}
