package store

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

func TestSortedOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ev := make([]event.Event, 5000)
	for i := range ev {
		ev[i] = event.Event{
			Project: "p" + strconv.Itoa(r.IntN(3)),
			KeyID:   "k" + strconv.Itoa(r.IntN(50)),
			Time:    base.Add(time.Duration(r.IntN(100000)) * time.Millisecond),
		}
	}
	order := SortOrder(ev)
	seen := make([]bool, len(ev))
	for _, i := range order {
		if seen[i] {
			t.Fatalf("index %d twice", i)
		}
		seen[i] = true
	}
	if len(order) != len(ev) {
		t.Fatalf("%d of %d", len(order), len(ev))
	}
	if !slices.IsSortedFunc(order, func(a, b int32) int {
		x, y := ev[a], ev[b]
		if x.Project != y.Project {
			return cmpStr(x.Project, y.Project)
		}
		if x.KeyID != y.KeyID {
			return cmpStr(x.KeyID, y.KeyID)
		}
		return x.Time.Compare(y.Time)
	}) {
		t.Fatal("not sorted by (project, key_id, time)")
	}
}

func cmpStr(a, b string) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}
