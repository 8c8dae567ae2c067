package store

import (
	"context"
	"fmt"
)

// Committed returns, per partition, the highest bus position of a
// consumer's completed inserts. Everything at or below it is in the store,
// so a consumer skips it even when the bus redelivers it because its ack
// was lost. Pending intents do not count: one not replayed (another member
// owns its partition) must not hide positions never stored.
func (d *DB) Committed(ctx context.Context, consumer string) (map[string]uint64, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	rows, err := d.conn.Query(Consistent(ctx), d.sql(`SELECT partition, toUInt64(max(last_pos)) FROM {db}.ingest_intents FINAL
WHERE consumer = {c:String} AND state = 'done' GROUP BY partition`), Params{}.Str("c", consumer))
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
