package store

import (
	"context"
	"fmt"
	"time"
)

// BillingLine is one project and key's billable usage in a period: allowed
// requests (outcome valid) and their bytes and cost units.
type BillingLine struct {
	Project   string
	KeyID     string
	Requests  uint64
	BytesIn   uint64
	BytesOut  uint64
	CostUnits uint64
}

// BillingLines sums billable usage per project and key over [from, to),
// which must be whole UTC days, from the per-day rollup; sorted by project
// then key.
func (d *DB) BillingLines(ctx context.Context, from, to time.Time) ([]BillingLine, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	if !from.Equal(from.UTC().Truncate(24*time.Hour)) || !to.Equal(to.UTC().Truncate(24*time.Hour)) {
		return nil, fmt.Errorf("%w: billing bounds must be whole UTC days", ErrInvalidQuery)
	}
	p := Params{}.I64("from", from.Unix()).I64("to", to.Unix())
	rows, err := d.conn.Query(ctx, d.sql(`SELECT project, key_id, toUInt64(sum(requests)), toUInt64(sum(bytes_in)), toUInt64(sum(bytes_out)), toUInt64(sum(cost_units))
FROM {db}.requests_1d
WHERE outcome = 'valid' AND day >= toDate(toDateTime({from:Int64}, 'UTC')) AND day < toDate(toDateTime({to:Int64}, 'UTC'))
GROUP BY project, key_id
ORDER BY project, key_id`), p)
	if err != nil {
		return nil, fmt.Errorf("store: billing lines: %w", err)
	}
	return scanBilling(rows)
}

func scanBilling(rows Rows) ([]BillingLine, error) {
	defer rows.Close()
	var out []BillingLine
	for rows.Next() {
		var l BillingLine
		if err := rows.Scan(&l.Project, &l.KeyID, &l.Requests, &l.BytesIn, &l.BytesOut, &l.CostUnits); err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// BillingSnapshot returns the saved line items of a closed period, if any.
func (d *DB) BillingSnapshot(ctx context.Context, period string) ([]BillingLine, time.Time, bool, error) {
	if err := d.check(); err != nil {
		return nil, time.Time{}, false, err
	}
	p := Params{}.Str("period", period)
	rows, err := d.conn.Query(ctx, d.sql(`SELECT toString(max(closed_at)), toUInt64(count()) FROM {db}.billing_snapshots FINAL WHERE period = {period:String}`), p)
	if err != nil {
		return nil, time.Time{}, false, fmt.Errorf("store: billing snapshot: %w", err)
	}
	var closed string
	var n uint64
	for rows.Next() {
		if err := rows.Scan(&closed, &n); err != nil {
			rows.Close()
			return nil, time.Time{}, false, err
		}
	}
	rows.Close()
	if n == 0 {
		return nil, time.Time{}, false, nil
	}
	closedAt, _ := time.ParseInLocation("2006-01-02 15:04:05", closed, time.UTC)
	rows, err = d.conn.Query(ctx, d.sql(`SELECT project, key_id, toUInt64(requests), toUInt64(bytes_in), toUInt64(bytes_out), toUInt64(cost_units)
FROM {db}.billing_snapshots FINAL WHERE period = {period:String} AND (project != '' OR key_id != '') ORDER BY project, key_id`), p)
	if err != nil {
		return nil, time.Time{}, false, fmt.Errorf("store: billing snapshot: %w", err)
	}
	lines, err := scanBilling(rows)
	return lines, closedAt, true, err
}

// CloseBillingPeriod records the line items of [from, to) under period,
// computed in the store from the per-day rollup, plus a marker row so that
// an empty period counts as closed too. Later exports read the snapshot.
func (d *DB) CloseBillingPeriod(ctx context.Context, period string, from, to time.Time) error {
	if err := d.check(); err != nil {
		return err
	}
	p := Params{}.Str("period", period).I64("from", from.Unix()).I64("to", to.Unix())
	if err := d.conn.Exec(ctx, d.sql(`INSERT INTO {db}.billing_snapshots (period, project, key_id, requests, bytes_in, bytes_out, cost_units, closed_at)
SELECT {period:String}, project, key_id, toUInt64(sum(requests)), toUInt64(sum(bytes_in)), toUInt64(sum(bytes_out)), toUInt64(sum(cost_units)), now()
FROM {db}.requests_1d
WHERE outcome = 'valid' AND day >= toDate(toDateTime({from:Int64}, 'UTC')) AND day < toDate(toDateTime({to:Int64}, 'UTC'))
GROUP BY project, key_id`), p); err != nil {
		return fmt.Errorf("store: close billing period %s: %w", period, err)
	}
	if err := d.conn.Exec(ctx, d.sql(`INSERT INTO {db}.billing_snapshots (period, project, key_id, requests, bytes_in, bytes_out, cost_units, closed_at)
SELECT {period:String}, '', '', 0, 0, 0, 0, now()`), p); err != nil {
		return fmt.Errorf("store: close billing period %s: %w", period, err)
	}
	return nil
}
