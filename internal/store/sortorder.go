package store

import (
	"cmp"
	"slices"

	"github.com/keymeter/keymeter/internal/event"
)

// SortOrder is the order of events by the table's sorting key (project,
// key_id, time). Written in that order, a block is already sorted and the
// engine skips sorting and permuting it (isAlreadySorted), which moves that
// work from the engine, the bottleneck, to Go. A counting sort by
// (project, key) rank keeps the input order within a key; a key whose
// events are out of time order is sorted by time.
func SortOrder(events []event.Event) []int32 {
	type pk struct{ project, key string }
	ids := make(map[pk]int32, 1024)
	var pks []pk
	of := make([]int32, len(events))
	last, lastID := pk{"\x00", "\x00"}, int32(0)
	for i := range events {
		k := pk{events[i].Project, events[i].KeyID}
		if k != last {
			id, ok := ids[k]
			if !ok {
				id = int32(len(pks))
				ids[k] = id
				pks = append(pks, k)
			}
			last, lastID = k, id
		}
		of[i] = lastID
	}
	byName := make([]int32, len(pks))
	for i := range byName {
		byName[i] = int32(i)
	}
	slices.SortFunc(byName, func(a, b int32) int {
		return cmp.Or(cmp.Compare(pks[a].project, pks[b].project), cmp.Compare(pks[a].key, pks[b].key))
	})
	rank := make([]int32, len(pks))
	for r, id := range byName {
		rank[id] = int32(r)
	}
	start := make([]int32, len(pks)+1)
	for _, id := range of {
		start[rank[id]+1]++
	}
	for r := 1; r < len(start); r++ {
		start[r] += start[r-1]
	}
	order := make([]int32, len(events))
	next := slices.Clone(start[:len(pks)])
	for i, id := range of {
		r := rank[id]
		order[next[r]] = int32(i)
		next[r]++
	}
	for r := 0; r < len(pks); r++ {
		run := order[start[r]:start[r+1]]
		sorted := true
		for j := 1; j < len(run); j++ {
			if events[run[j]].Time.Before(events[run[j-1]].Time) {
				sorted = false
				break
			}
		}
		if !sorted {
			slices.SortStableFunc(run, func(a, b int32) int { return events[a].Time.Compare(events[b].Time) })
		}
	}
	return order
}
