package keys

import (
	"math/rand/v2"
	"testing"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// TestTableModel applies random inserts, updates and deletes in random
// batches and compares every lookup (by hash and by id) with a plain map.
func TestTableModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tbl, err := NewTable(TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	type entry struct {
		st  *keymeterv1.KeyState
		sec Secret
	}
	live := map[string]entry{}
	var gone []entry
	var ids []string
	snapshot := true
	for round := range 300 {
		var batch []bus.KeyUpdate
		for range rng.IntN(200) + 1 {
			switch r := rng.IntN(10); {
			case r < 6 || len(ids) == 0: // insert
				st, sec := newState(t, "p")
				live[st.Id] = entry{st, sec}
				ids = append(ids, st.Id)
				batch = append(batch, stateUpdate(t, st))
			case r < 8: // update
				e := live[ids[rng.IntN(len(ids))]]
				e.st.Version++
				e.st.Name = "v"
				batch = append(batch, stateUpdate(t, e.st))
			default: // delete
				i := rng.IntN(len(ids))
				id := ids[i]
				ids[i] = ids[len(ids)-1]
				ids = ids[:len(ids)-1]
				gone = append(gone, live[id])
				delete(live, id)
				batch = append(batch, bus.KeyUpdate{ID: id, Deleted: true})
			}
		}
		if snapshot && round == 20 {
			batch = append(batch, bus.KeyUpdate{EndOfSnapshot: true})
			snapshot = false
		}
		tbl.Apply(batch)
		if snapshot {
			continue
		}
		if tbl.Len() != len(live) {
			t.Fatalf("round %d: len %d, want %d", round, tbl.Len(), len(live))
		}
		for id, e := range live {
			if r := lookup(tbl, e.sec); r == nil || r.ID != id {
				t.Fatalf("round %d: %s not found by hash", round, id)
			}
			if tbl.ByID(id) == nil {
				t.Fatalf("round %d: %s not found by id", round, id)
			}
		}
		for _, e := range gone {
			if lookup(tbl, e.sec) != nil || tbl.ByID(e.st.Id) != nil {
				t.Fatalf("round %d: deleted %s still found", round, e.st.Id)
			}
		}
	}
}

// TestTableConcurrentReads reads while the table changes (run with -race).
func TestTableConcurrentReads(t *testing.T) {
	tbl, err := NewTable(TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tbl.Apply([]bus.KeyUpdate{{EndOfSnapshot: true}})
	var secs []Secret
	var states []*keymeterv1.KeyState
	for range 500 {
		st, sec := newState(t, "p")
		secs, states = append(secs, sec), append(states, st)
	}
	done := make(chan struct{})
	readers := make(chan int)
	for range 2 {
		go func() {
			n := 0
			for {
				select {
				case <-done:
					readers <- n
					return
				default:
				}
				for _, s := range secs {
					if r := lookup(tbl, s); r != nil {
						_ = r.Status
						n++
					}
				}
			}
		}()
	}
	for i, st := range states {
		tbl.Apply([]bus.KeyUpdate{stateUpdate(t, st)})
		if i%3 == 0 {
			st.Version++
			st.Status = keymeterv1.KeyStatus_KEY_STATUS_REVOKED
			tbl.Apply([]bus.KeyUpdate{stateUpdate(t, st)})
		}
		if i%5 == 0 {
			tbl.Apply([]bus.KeyUpdate{{ID: states[i/2].Id, Deleted: true}})
		}
	}
	close(done)
	<-readers
	<-readers
}

// TestTableResync: after a broken watch, the new snapshot replaces the
// table's content: keys it lacks (deleted while the watch was down) go.
func TestTableResync(t *testing.T) {
	tbl, err := NewTable(TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	a, sa := newState(t, "p")
	b, sb := newState(t, "p")
	tbl.Apply([]bus.KeyUpdate{stateUpdate(t, a), stateUpdate(t, b), {EndOfSnapshot: true}})
	// What Run does before watching again.
	tbl.mu.Lock()
	tbl.seen = make(map[string]struct{})
	tbl.mu.Unlock()
	c, sc := newState(t, "p")
	tbl.Apply([]bus.KeyUpdate{stateUpdate(t, a), stateUpdate(t, c)})
	if lookup(tbl, sb) == nil {
		t.Fatal("key removed before the new snapshot ended")
	}
	tbl.Apply([]bus.KeyUpdate{{EndOfSnapshot: true}})
	if lookup(tbl, sa) == nil || lookup(tbl, sc) == nil || lookup(tbl, sb) != nil || tbl.Len() != 2 {
		t.Fatalf("after resync: len %d", tbl.Len())
	}
}
