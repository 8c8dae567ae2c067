package store

import (
	"context"
	"fmt"
)

// Committed returns, per partition, the highest bus position a consumer
// has recorded an intent for. Everything at or below it is in the store
// (pending intents are replayed before this is read), so a consumer skips
// it even when the bus redelivers it because its ack was lost.
func (d *DB) Committed(ctx context.Context, consumer string) (map[string]uint64, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	rows, err := d.conn.Query(ctx, d.sql(`SELECT partition, toUInt64(max(last_pos)) FROM {db}.ingest_intents FINAL
WHERE consumer = {c:String} GROUP BY partition`), Params{}.Str("c", consumer))
	if err != nil {
		return nil, fmt.Errorf("store: committed positions: %w", err)
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var p string
		var last uint64
		if err := rows.Scan(&p, &last); err != nil {
			return nil, err
		}
		out[p] = last
	}
	return out, rows.Err()
}
