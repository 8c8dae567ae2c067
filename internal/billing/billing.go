// Package billing turns stored usage into line items per project and key.
//
// Meters are the allowed requests of a period (outcome valid) and their
// bytes in, bytes out and cost units, read from the per-day rollup, which
// sums exactly to the raw events. A period is open until Grace after its
// end; after that an admin closes it (Close, POST /v1/billing/{period}/close,
// keymeter billing close): its line items are recorded in the store and
// every later export prints those same line items, byte for byte, and
// reports events that arrived for the period after it closed as
// late_events instead of adding them. Exports only read: an export never
// closes a period.
package billing

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"

	"github.com/keymeter/keymeter/internal/store"
)

// Store is what billing reads and writes.
type Store interface {
	BillingLines(ctx context.Context, from, to time.Time) ([]store.BillingLine, error)
	BillingSnapshot(ctx context.Context, period string) ([]store.BillingLine, time.Time, bool, error)
	CloseBillingPeriod(ctx context.Context, period string, from, to time.Time) error
}

// Meters in the order they are printed.
var Meters = []string{"requests", "bytes_in", "bytes_out", "cost_units"}

// Exporter produces billing exports.
type Exporter struct {
	Store Store
	// Grace after a period's end before it closes (default 48h): late
	// events within it are still billed.
	Grace time.Duration
	Now   func() time.Time
}

// LineItem is one meter of one key in a period.
type LineItem struct {
	Project  string `json:"project"`
	KeyID    string `json:"key_id"`
	Meter    string `json:"meter"`
	Quantity uint64 `json:"quantity"`
}

// Export is one period's billing.
type Export struct {
	Period     string            `json:"period"`
	Closed     bool              `json:"closed"`
	LineItems  []LineItem        `json:"line_items"`
	Totals     map[string]uint64 `json:"totals"`
	LateEvents uint64            `json:"late_events"`
}

// ErrNotDue: the period cannot be closed yet (it has not ended plus Grace).
var ErrNotDue = errors.New("billing: period not due for closing")

// PeriodBounds parses "2026-11" into [start, end).
func PeriodBounds(period string) (time.Time, time.Time, error) {
	start, err := time.Parse("2006-01", period)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("period %q: want a month such as 2026-11", period)
	}
	return start, start.AddDate(0, 1, 0), nil
}

// Close closes a period whose end plus Grace has passed: its line items
// are recorded and every later export shows them. Closing a closed period
// changes nothing. It returns the closed export.
func (x *Exporter) Close(ctx context.Context, period string) (*Export, error) {
	from, to, err := PeriodBounds(period)
	if err != nil {
		return nil, err
	}
	now := time.Now
	if x.Now != nil {
		now = x.Now
	}
	grace := x.Grace
	if grace == 0 {
		grace = 48 * time.Hour
	}
	if due := to.Add(grace); !now().After(due) {
		return nil, fmt.Errorf("%w: %s can be closed after %s (its end plus a grace of %s for late events)", ErrNotDue, period, due.Format(time.RFC3339), grace)
	}
	_, _, ok, err := x.Store.BillingSnapshot(ctx, period)
	if err != nil {
		return nil, err
	}
	if !ok {
		if err := x.Store.CloseBillingPeriod(ctx, period, from, to); err != nil {
			return nil, err
		}
	}
	return x.Build(ctx, period)
}

// Build computes the export of a period: the recorded line items of a
// closed period, the current ones of an open period. It never writes.
func (x *Exporter) Build(ctx context.Context, period string) (*Export, error) {
	from, to, err := PeriodBounds(period)
	if err != nil {
		return nil, err
	}
	current, err := x.Store.BillingLines(ctx, from, to)
	if err != nil {
		return nil, err
	}
	out := &Export{Period: period, Totals: map[string]uint64{}}
	lines := current
	snap, _, closed, err := x.Store.BillingSnapshot(ctx, period)
	if err != nil {
		return nil, err
	}
	if closed {
		out.Closed = true
		lines = snap
		var billed, now uint64
		for _, l := range snap {
			billed += l.Requests
		}
		for _, l := range current {
			now += l.Requests
		}
		if now > billed {
			out.LateEvents = now - billed
		}
	}
	sort.Slice(lines, func(i, j int) bool {
		if lines[i].Project != lines[j].Project {
			return lines[i].Project < lines[j].Project
		}
		return lines[i].KeyID < lines[j].KeyID
	})
	out.LineItems = []LineItem{}
	for _, l := range lines {
		for _, m := range Meters {
			q := map[string]uint64{"requests": l.Requests, "bytes_in": l.BytesIn, "bytes_out": l.BytesOut, "cost_units": l.CostUnits}[m]
			out.LineItems = append(out.LineItems, LineItem{Project: l.Project, KeyID: l.KeyID, Meter: m, Quantity: q})
			out.Totals[m] += q
		}
	}
	for _, m := range Meters {
		out.Totals[m] += 0
	}
	return out, nil
}

// Export writes the period's billing as csv or json; the same stored data
// gives the same bytes.
func (x *Exporter) Export(ctx context.Context, period, format string, w io.Writer) error {
	ex, err := x.Build(ctx, period)
	if err != nil {
		return err
	}
	return Write(ex, format, w)
}

// CloseExport closes the period (Close) and writes its export as Export does.
func (x *Exporter) CloseExport(ctx context.Context, period, format string, w io.Writer) error {
	ex, err := x.Close(ctx, period)
	if err != nil {
		return err
	}
	return Write(ex, format, w)
}

// Write writes an export as csv or json.
func Write(ex *Export, format string, w io.Writer) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(ex)
	case "csv":
		cw := csv.NewWriter(w)
		_ = cw.Write([]string{"period", "project", "key_id", "meter", "quantity"})
		for _, li := range ex.LineItems {
			_ = cw.Write([]string{ex.Period, li.Project, li.KeyID, li.Meter, strconv.FormatUint(li.Quantity, 10)})
		}
		cw.Flush()
		return cw.Error()
	}
	return fmt.Errorf("format %q: accepted values are csv, json", format)
}
