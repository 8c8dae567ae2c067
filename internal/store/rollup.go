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

// ipSet is a bucket's distinct IP hashes: inline while few (most buckets
// see a handful of addresses), a map past that. A batch-wide map of (bucket,
// IP) was slower: cache misses on half a million entries.
type ipSet struct {
	n      int
	inline [4]uint64
	more   map[uint64]struct{}
}

func (s *ipSet) add(h uint64) {
	if s.more != nil {
		s.more[h] = struct{}{}
		return
	}
	for i := 0; i < s.n; i++ {
		if s.inline[i] == h {
			return
		}
	}
	if s.n < len(s.inline) {
		s.inline[s.n] = h
		s.n++
		return
	}
	s.more = make(map[uint64]struct{}, 16)
	for _, x := range s.inline {
		s.more[x] = struct{}{}
	}
	s.more[h] = struct{}{}
}

func (s *ipSet) len() int {
	if s.more != nil {
		return len(s.more)
	}
	return s.n
}

func (s *ipSet) appendTo(dst []uint64) []uint64 {
	if s.more == nil {
		return append(dst, s.inline[:s.n]...)
	}
	for h := range s.more {
		dst = append(dst, h)
	}
	return dst
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
	// Sized for a typical batch (tens of events per bucket): growing the
	// map and slices cost a third of the time.
	guess := len(events)/8 + 16
	idx := make(map[bucketKey]int32, guess)
	rows := make([]RollupRow, 0, guess)
	sets := make([]ipSet, 0, guess)
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
			sets = append(sets, ipSet{})
		}
		r := &rows[b]
		r.Requests++
		r.BytesIn += e.BytesIn
		r.BytesOut += e.BytesOut
		r.CostUnits += uint64(e.CostUnits)
		sets[b].add(xxhash.Sum64String(e.ClientIP))
	}
	// One backing array for every bucket's IP hashes.
	total := 0
	for i := range sets {
		total += sets[i].len()
	}
	all := make([]uint64, 0, total)
	for b := range rows {
		start := len(all)
		all = sets[b].appendTo(all)
		rows[b].IPHashes = all[start:len(all):len(all)]
	}
	return rows
}
