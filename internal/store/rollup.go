package store

import (
	"cmp"
	"slices"

	"github.com/keymeter/keymeter/internal/event"
)

type bucketKey struct {
	minute  int64
	project string
	keyID   string
	outcome event.Outcome
	route   string
	country string
}

type bucket struct {
	row RollupRow
	ips map[string]struct{}
}

// PreAggregate folds a batch into per-minute buckets. The rows are sorted so
// that a replay of the same batch produces the same insert.
func PreAggregate(events []event.Event) []RollupRow {
	m := make(map[bucketKey]*bucket, 64)
	var last *bucket
	var lastKey bucketKey
	for i := range events {
		e := &events[i]
		k := bucketKey{e.Time.Unix() / 60 * 60, e.Project, e.KeyID, e.Outcome, e.Route, e.Country}
		b := last
		if b == nil || k != lastKey {
			b = m[k]
			if b == nil {
				b = &bucket{
					row: RollupRow{Minute: uint32(k.minute), Project: e.Project, KeyID: e.KeyID,
						Outcome: e.Outcome.String(), Route: e.Route, Country: e.Country},
					ips: make(map[string]struct{}, 4),
				}
				m[k] = b
			}
			last, lastKey = b, k
		}
		b.row.Requests++
		b.row.BytesIn += e.BytesIn
		b.row.BytesOut += e.BytesOut
		b.row.CostUnits += uint64(e.CostUnits)
		b.ips[e.ClientIP] = struct{}{}
	}
	rows := make([]RollupRow, 0, len(m))
	for _, b := range m {
		ips := make([]string, 0, len(b.ips))
		for ip := range b.ips {
			ips = append(ips, ip)
		}
		slices.Sort(ips)
		b.row.IPs = ips
		rows = append(rows, b.row)
	}
	slices.SortFunc(rows, func(a, b RollupRow) int {
		return cmp.Or(cmp.Compare(a.Minute, b.Minute), cmp.Compare(a.Project, b.Project),
			cmp.Compare(a.KeyID, b.KeyID), cmp.Compare(a.Outcome, b.Outcome),
			cmp.Compare(a.Route, b.Route), cmp.Compare(a.Country, b.Country))
	})
	return rows
}
