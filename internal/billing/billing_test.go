package billing_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/billing"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

func TestExportReconcilesIsStableAndReportsLateEvents(t *testing.T) {
	ctx := context.Background()
	db, err := chdb.Open(chdb.Config{DataDir: t.TempDir(), Database: "billing_test"})
	if err != nil {
		t.Fatalf("open chdb (CHDB_LIB_PATH=%q): %v", os.Getenv("CHDB_LIB_PATH"), err)
	}
	defer db.Close(context.Background())
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	sept := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	mk := func(prefix string, n int, at time.Time, outcome event.Outcome) []event.Event {
		var out []event.Event
		for i := range n {
			out = append(out, event.Event{ID: fmt.Sprintf("%s-%d", prefix, i), Time: at.Add(time.Duration(i) * time.Minute),
				Project: fmt.Sprintf("proj_%d", i%2), KeyID: fmt.Sprintf("key_%d", i%5), Outcome: outcome,
				BytesIn: 10, BytesOut: 100, CostUnits: 2, Status: 200})
		}
		return out
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(db.InsertEvents(ctx, "a", mk("a", 500, sept.Add(time.Hour), event.OutcomeValid)))
	must(db.InsertEvents(ctx, "b", mk("b", 70, sept.Add(48*time.Hour), event.OutcomeRateLimited)))         // refused: not billed
	must(db.InsertEvents(ctx, "c", mk("c", 30, sept.AddDate(0, 1, 0).Add(time.Hour), event.OutcomeValid))) // October

	x := &billing.Exporter{Store: db, Now: func() time.Time { return time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC) }}
	// Reading a past period never closes it (issue 12 item 11).
	for range 2 {
		ex, err := x.Build(ctx, "2026-09")
		must(err)
		if ex.Closed {
			t.Fatal("an export closed the period")
		}
		if _, _, closed, err := db.BillingSnapshot(ctx, "2026-09"); err != nil || closed {
			t.Fatalf("an export wrote a snapshot (%v)", err)
		}
	}
	// A period within its grace cannot be closed.
	if _, err := x.Close(ctx, "2026-11"); !errors.Is(err, billing.ErrNotDue) {
		t.Fatalf("closing the current month: %v", err)
	}
	var first bytes.Buffer
	must(x.CloseExport(ctx, "2026-09", "json", &first))
	ex, err := x.Build(ctx, "2026-09")
	must(err)
	if !ex.Closed || ex.Totals["requests"] != 500 || ex.Totals["cost_units"] != 1000 || ex.Totals["bytes_out"] != 50000 || ex.LateEvents != 0 {
		t.Fatalf("September: %+v", ex)
	}
	if len(ex.LineItems) != 10*4 {
		t.Fatalf("%d line items, want 40", len(ex.LineItems))
	}
	var second bytes.Buffer
	must(x.Export(ctx, "2026-09", "json", &second))
	if first.String() != second.String() {
		t.Fatal("two exports of a closed period differ")
	}
	// A late event for September: reported, not billed.
	must(db.InsertEvents(ctx, "late", mk("late", 3, sept.Add(72*time.Hour), event.OutcomeValid)))
	ex, err = x.Build(ctx, "2026-09")
	must(err)
	if ex.Totals["requests"] != 500 || ex.LateEvents != 3 {
		t.Fatalf("after late events: totals %v late %d", ex.Totals, ex.LateEvents)
	}
	var csvOut bytes.Buffer
	must(x.Export(ctx, "2026-10", "csv", &csvOut))
	lines := strings.Split(strings.TrimSpace(csvOut.String()), "\n")
	if lines[0] != "period,project,key_id,meter,quantity" || len(lines) != 1+10*4 { // 10 (project, key) pairs, 4 meters each
		t.Fatalf("October csv:\n%s", csvOut.String())
	}
	var sum int
	for _, l := range lines[1:] {
		if strings.Contains(l, ",requests,") {
			var q int
			fmt.Sscanf(l[strings.LastIndex(l, ",")+1:], "%d", &q)
			sum += q
		}
	}
	if sum != 30 {
		t.Fatalf("October requests sum %d, want 30", sum)
	}
	if _, err := x.Build(ctx, "2026-13"); err == nil {
		t.Fatal("bad period accepted")
	}
}
