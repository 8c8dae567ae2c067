package detect

import (
	"math/rand/v2"
	"testing"
)

// TestIndexAgainstMap runs random inserts and deletes against a map,
// with hashes crowded into few slots so probe runs wrap and shift.
func TestIndexAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	x := newIndex()
	ref := map[uint64]int32{}
	for i := 0; i < 200_000; i++ {
		h := uint64(rng.IntN(5000)) * 64 // many share a home slot
		if rng.IntN(3) == 0 {
			h = uint64(rng.IntN(100))
		}
		switch rng.IntN(3) {
		case 0, 1:
			x.set(h, int32(i))
			ref[fixHash(h)] = int32(i)
		case 2:
			x.del(h)
			delete(ref, fixHash(h))
		}
		if i%1000 == 0 {
			if x.len() != len(ref) {
				t.Fatalf("len %d, want %d", x.len(), len(ref))
			}
			for k, v := range ref {
				if got, ok := x.get(k); !ok || got != v {
					t.Fatalf("get %d = %d %v, want %d", k, got, ok, v)
				}
			}
		}
	}
}
