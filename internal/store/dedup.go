package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// EventIDChecker finds which events are stored already, by event id: the
// aggregator checks a batch its producer may have published before (and a
// replayed range) against it, so an event is stored once even when its
// batch arrives again long after the bus's and the aggregator's own
// duplicate windows.
type EventIDChecker interface {
	// StoredEventIDs returns the ids of those of events that are in the
	// requests table. It reads only the parts of the events' time range
	// (and of their projects and keys, the table's sort key): an event is
	// stored with its own time, so a stored copy is always in that range.
	StoredEventIDs(ctx context.Context, events []event.Event) (map[string]struct{}, error)
}

var _ EventIDChecker = (*DB)(nil)

// StoredEventIDs implements EventIDChecker with one query, whatever the
// number of events. On a cluster it reads with select_sequential_consistency
// (see Consistent), so a block another member inserted with insert_quorum
// is seen.
func (d *DB) StoredEventIDs(ctx context.Context, events []event.Event) (map[string]struct{}, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	out := map[string]struct{}{}
	if len(events) == 0 {
		return out, nil
	}
	projects, keys := map[string]struct{}{}, map[string]struct{}{}
	from, to := events[0].Time, events[0].Time
	for i := range events {
		e := &events[i]
		projects[e.Project], keys[e.KeyID] = struct{}{}, struct{}{}
		if e.Time.Before(from) {
			from = e.Time
		}
		if e.Time.After(to) {
			to = e.Time
		}
	}
	// The column keeps milliseconds: widen the bounds to whole ones.
	p := Params{}.Arr("projects", setSlice(projects)).Arr("keys", setSlice(keys)).
		Ms("from", from.Truncate(time.Millisecond)).Ms("to", to.Truncate(time.Millisecond).Add(time.Millisecond))
	// Nothing stored in the range (a first block after a start, usually):
	// no need to send and hash the ids (measured: 150k ids cost chDB
	// ~80-120 ms of CPU on an empty table; the count reads the sort key's
	// index only).
	var inRange uint64
	if err := EachRow(Consistent(ctx), d.conn, d.sql(`SELECT toUInt64(count()) FROM {db}.requests
WHERE project IN (SELECT arrayJoin({projects:Array(String)})) AND key_id IN (SELECT arrayJoin({keys:Array(String)}))
  AND time >= fromUnixTimestamp64Milli({from:Int64}, 'UTC') AND time < fromUnixTimestamp64Milli({to:Int64}, 'UTC')`), p, func(r Rows) error { return r.Scan(&inRange) }); err != nil {
		return nil, fmt.Errorf("store: look up %d event ids: %w", len(events), err)
	}
	if inRange == 0 {
		return out, nil
	}
	// The ids travel as one string, split in SQL: parsing a 100k-element
	// Array(String) parameter took ~150 ms of chDB's time, the split ~5 ms.
	// An id holding the separator goes in the (then small) array instead.
	var joined strings.Builder
	var odd []string
	for i := range events {
		e := &events[i]
		switch {
		case strings.IndexByte(e.ID, '\n') >= 0:
			odd = append(odd, e.ID)
		default:
			if i > 0 {
				joined.WriteByte('\n')
			}
			joined.WriteString(e.ID)
		}
	}
	p = p.Str("ids", joined.String()).Arr("odd", odd)
	rows, err := d.conn.Query(Consistent(ctx), d.sql(`SELECT DISTINCT event_id FROM {db}.requests
WHERE project IN (SELECT arrayJoin({projects:Array(String)})) AND key_id IN (SELECT arrayJoin({keys:Array(String)}))
  AND time >= fromUnixTimestamp64Milli({from:Int64}, 'UTC') AND time < fromUnixTimestamp64Milli({to:Int64}, 'UTC')
  AND event_id IN (SELECT arrayJoin(arrayConcat(splitByChar('\n', {ids:String}), {odd:Array(String)})))`), p)
	if err != nil {
		return nil, fmt.Errorf("store: look up %d event ids: %w", len(events), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = struct{}{}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: look up %d event ids: %w", len(events), err)
	}
	return out, nil
}

func setSlice(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Consistency is what a statement needs of a replicated ClickHouse
// cluster beyond the defaults. Backends without replicas ignore it.
type Consistency int

const (
	// ConsistentRead: the read sees every write acknowledged with
	// QuorumWrite (select_sequential_consistency = 1).
	ConsistentRead Consistency = 1 + iota
	// QuorumWrite: the write is acknowledged once a majority of replicas
	// has it, in sequence with the table's other quorum writes
	// (insert_quorum = 'auto', insert_quorum_parallel = 0).
	QuorumWrite
)

type consistencyKey struct{}

// Consistent marks ctx's reads as needing ConsistentRead.
func Consistent(ctx context.Context) context.Context {
	return context.WithValue(ctx, consistencyKey{}, ConsistentRead)
}

// Quorum marks ctx's writes as needing QuorumWrite.
func Quorum(ctx context.Context) context.Context {
	return context.WithValue(ctx, consistencyKey{}, QuorumWrite)
}

// ConsistencyOf is what ctx asks of a statement (0: nothing special).
func ConsistencyOf(ctx context.Context) Consistency {
	c, _ := ctx.Value(consistencyKey{}).(Consistency)
	return c
}
