package store

import (
	"context"
	"fmt"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// ScanEvents calls fn for every stored event with from <= time < to, oldest
// first (the order a backtest replays them in), reading pages of pageSize.
func (d *DB) ScanEvents(ctx context.Context, from, to time.Time, pageSize int, fn func(event.Event) error) error {
	if err := d.check(); err != nil {
		return err
	}
	if !from.Before(to) {
		return fmt.Errorf("%w: from %s is not before to %s", ErrInvalidQuery, from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	if pageSize <= 0 {
		pageSize = 50_000
	}
	afterMs, afterID := from.UnixMilli()-1, "\\xff"
	for {
		p := Params{}.Ms("from", from).Ms("to", to).I64("ams", afterMs).Str("aid", afterID).U64("limit", uint64(pageSize))
		rows, err := d.conn.Query(ctx, d.sql(`SELECT `+logColumns+` FROM {db}.requests
WHERE time >= fromUnixTimestamp64Milli({from:Int64}, 'UTC') AND time < fromUnixTimestamp64Milli({to:Int64}, 'UTC')
  AND (time, event_id) > (fromUnixTimestamp64Milli({ams:Int64}, 'UTC'), {aid:String})
ORDER BY time, event_id LIMIT {limit:UInt32}`), p)
		if err != nil {
			return fmt.Errorf("store: scan events: %w", err)
		}
		n := 0
		for rows.Next() {
			e, err := scanEvent(rows)
			if err != nil {
				rows.Close()
				return err
			}
			n++
			afterMs, afterID = e.Time.UnixMilli(), e.ID
			if err := fn(e); err != nil {
				rows.Close()
				return err
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return err
		}
		if n < pageSize {
			return nil
		}
	}
}
