package detect

// index maps a group key's 64-bit hash to its row: open addressing with
// linear probing over one flat array, so a lookup usually costs one cache
// miss (Go's map costs two: control word, then slot). Hash 0 marks an empty
// slot; a real hash of 0 is stored as 1 (the collision is harmless: keys are
// compared by hash only, as with the map it replaces).
type index struct {
	slots []slot
	mask  uint64
	n     int
}

type slot struct {
	h   uint64
	row int32
}

func fixHash(h uint64) uint64 {
	if h == 0 {
		return 1
	}
	return h
}

func newIndex() *index {
	return &index{slots: make([]slot, 64), mask: 63}
}

func (x *index) get(h uint64) (int32, bool) {
	h = fixHash(h)
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		s := &x.slots[i]
		if s.h == h {
			return s.row, true
		}
		if s.h == 0 {
			return 0, false
		}
	}
}

// set inserts or updates h.
func (x *index) set(h uint64, row int32) {
	h = fixHash(h)
	if (x.n+1)*4 > len(x.slots)*3 {
		x.grow()
	}
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		s := &x.slots[i]
		if s.h == h {
			s.row = row
			return
		}
		if s.h == 0 {
			*s = slot{h: h, row: row}
			x.n++
			return
		}
	}
}

// del removes h, shifting later entries of its probe run back so that no
// tombstones are needed.
func (x *index) del(h uint64) {
	h = fixHash(h)
	i := h & x.mask
	for {
		if x.slots[i].h == 0 {
			return
		}
		if x.slots[i].h == h {
			break
		}
		i = (i + 1) & x.mask
	}
	x.n--
	for {
		x.slots[i] = slot{}
		j := i
		for {
			j = (j + 1) & x.mask
			if x.slots[j].h == 0 {
				return
			}
			home := x.slots[j].h & x.mask
			// Move j back to i unless its home lies cyclically in (i, j].
			if (i <= j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
				x.slots[i] = x.slots[j]
				i = j
				break
			}
		}
	}
}

func (x *index) grow() {
	old := x.slots
	x.slots = make([]slot, len(old)*2)
	x.mask = uint64(len(x.slots) - 1)
	x.n = 0
	for _, s := range old {
		if s.h != 0 {
			for i := s.h & x.mask; ; i = (i + 1) & x.mask {
				if x.slots[i].h == 0 {
					x.slots[i] = s
					x.n++
					break
				}
			}
		}
	}
}

func (x *index) len() int { return x.n }
