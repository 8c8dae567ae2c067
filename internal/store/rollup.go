package store

import (
	"github.com/cespare/xxhash/v2"

	"github.com/keymeter/keymeter/internal/event"
)

// interner numbers the distinct values of one low-cardinality field of a
// batch. A short linear scan beats hashing for the few routes, countries
// and projects a batch has; it falls back to a map past 16 values.
type interner struct {
	vals []string
	m    map[string]uint32
}

func (t *interner) id(s string) uint32 {
	if t.m == nil {
		for i, v := range t.vals {
			if v == s {
				return uint32(i)
			}
		}
		t.vals = append(t.vals, s)
		if len(t.vals) > 16 {
			t.m = make(map[string]uint32, 64)
			for i, v := range t.vals {
				t.m[v] = uint32(i)
			}
		}
		return uint32(len(t.vals) - 1)
	}
	if i, ok := t.m[s]; ok {
		return i
	}
	t.vals = append(t.vals, s)
	t.m[s] = uint32(len(t.vals) - 1)
	return uint32(len(t.vals) - 1)
}

type bucketKey struct {
	minute  int64
	key     uint32
	route   uint32
	country uint32
	project uint16
	outcome event.Outcome
}

type ipKey struct {
	bucket int32
	hash   uint64
}

// PreAggregate folds a batch into per-minute buckets with each bucket's
// distinct client IPs as xxHash64, the hash ClickHouse's xxHash64 computes
// (hashing dominates: fields are numbered per batch so
// that the bucket map hashes integers, and each IP is hashed once). Rows and
// IPs are in no particular order: a replay is deduplicated by its token, not
// by its content, and a rollup insert is one block.
func PreAggregate(events []event.Event) []RollupRow {
	keys := make(map[string]uint32, 256)
	var keyNames []string
	var routes, countries, projects interner
	idx := make(map[bucketKey]int32, 1024)
	ips := make(map[ipKey]struct{}, len(events)/4)
	var rows []RollupRow
	var nips []int32
	lastKeyName, lastKeyID := "\x00", uint32(0)
	for i := range events {
		e := &events[i]
		kid := lastKeyID
		if e.KeyID != lastKeyName {
			var ok bool
			if kid, ok = keys[e.KeyID]; !ok {
				kid = uint32(len(keyNames))
				keys[e.KeyID] = kid
				keyNames = append(keyNames, e.KeyID)
			}
			lastKeyName, lastKeyID = e.KeyID, kid
		}
		k := bucketKey{e.Time.Unix() / 60 * 60, kid, routes.id(e.Route), countries.id(e.Country), uint16(projects.id(e.Project)), e.Outcome}
		b, ok := idx[k]
		if !ok {
			b = int32(len(rows))
			idx[k] = b
			rows = append(rows, RollupRow{Minute: uint32(k.minute), Project: e.Project, KeyID: e.KeyID,
				Outcome: e.Outcome.String(), Route: e.Route, Country: e.Country})
			nips = append(nips, 0)
		}
		r := &rows[b]
		r.Requests++
		r.BytesIn += e.BytesIn
		r.BytesOut += e.BytesOut
		r.CostUnits += uint64(e.CostUnits)
		ik := ipKey{b, xxhash.Sum64String(e.ClientIP)}
		n := len(ips)
		ips[ik] = struct{}{}
		if len(ips) > n {
			nips[b]++
		}
	}
	// One backing array for every bucket's IP list.
	all := make([]uint64, len(ips))
	off := int32(0)
	for b := range rows {
		rows[b].IPHashes = all[off : off : off+nips[b]]
		off += nips[b]
	}
	for k := range ips {
		rows[k.bucket].IPHashes = append(rows[k.bucket].IPHashes, k.hash)
	}
	return rows
}
