package keys

import "encoding/binary"

// The table's indexes are open-addressing arrays of uint32 cells (linear
// probing, load ≤ 3/4) instead of Go maps: 4 bytes per cell against ~40-60
// bytes per entry for a map[[16]byte]uint32 or map[string]uint32, which is
// most of what lets a million keys fit in well under 300 MB.

const (
	cellIdxBits = 24
	cellIdxMask = 1<<cellIdxBits - 1
	// maxKeys: a cell holds slot index+1 in 24 bits.
	maxKeys = cellIdxMask - 1
)

// hashIndex maps a key hash to its slot. A cell holds the slot index + 1 in
// its low 24 bits and an 8-bit fingerprint of the hash in its high 8, so a
// probe that does not match rarely touches the slot. Published copies are
// immutable; the writer changes a private copy and publishes it.
type hashIndex struct {
	cells []uint32
	n     int
}

func fingerprint(k *hkey) uint32 { return uint32(k[8]) }

func homeOf(k *hkey, mask uint32) uint32 { return binary.LittleEndian.Uint32(k[2:6]) & mask }

// find returns the slot index of k, or -1. keyOf gives a slot's key.
func (x *hashIndex) find(k *hkey, keyOf func(uint32) *hkey) int64 {
	if len(x.cells) == 0 {
		return -1
	}
	mask := uint32(len(x.cells) - 1)
	fp := fingerprint(k)
	for i := homeOf(k, mask); ; i = (i + 1) & mask {
		c := x.cells[i]
		if c == 0 {
			return -1
		}
		if c>>cellIdxBits == fp && *keyOf(c&cellIdxMask - 1) == *k {
			return int64(c&cellIdxMask - 1)
		}
	}
}

func (x *hashIndex) clone() *hashIndex {
	return &hashIndex{cells: append([]uint32(nil), x.cells...), n: x.n}
}

// insert adds k → idx (k must be absent), growing when 3/4 full.
func (x *hashIndex) insert(k *hkey, idx uint32, keyOf func(uint32) *hkey) {
	if (x.n+1)*4 > len(x.cells)*3 {
		x.grow(keyOf)
	}
	mask := uint32(len(x.cells) - 1)
	i := homeOf(k, mask)
	for x.cells[i] != 0 {
		i = (i + 1) & mask
	}
	x.cells[i] = fingerprint(k)<<cellIdxBits | (idx + 1)
	x.n++
}

func (x *hashIndex) grow(keyOf func(uint32) *hkey) {
	old := x.cells
	x.cells = make([]uint32, max(16, 2*len(old)))
	x.n = 0
	for _, c := range old {
		if c != 0 {
			idx := c&cellIdxMask - 1
			x.insert(keyOf(idx), idx, keyOf)
		}
	}
}

// remove deletes k with backward-shift deletion (no tombstones).
func (x *hashIndex) remove(k *hkey, keyOf func(uint32) *hkey) {
	if len(x.cells) == 0 {
		return
	}
	mask := uint32(len(x.cells) - 1)
	i := homeOf(k, mask)
	for {
		c := x.cells[i]
		if c == 0 {
			return
		}
		if *keyOf(c&cellIdxMask - 1) == *k {
			break
		}
		i = (i + 1) & mask
	}
	x.n--
	removeAt(x.cells, i, func(c uint32) uint32 { return homeOf(keyOf(c&cellIdxMask-1), mask) })
}

// removeAt empties cells[i] and shifts later cells of the probe run back
// so that every remaining cell stays reachable from its home.
func removeAt(cells []uint32, i uint32, home func(uint32) uint32) {
	mask := uint32(len(cells) - 1)
	j := i
	for {
		j = (j + 1) & mask
		c := cells[j]
		if c == 0 {
			cells[i] = 0
			return
		}
		h := home(c)
		// c may move to i unless its home lies cyclically in (i, j].
		if (i <= j && (h <= i || h > j)) || (i > j && h <= i && h > j) {
			cells[i] = c
			i = j
		}
	}
}

// idIndex maps a key id to its slot; only the writer uses it.
type idIndex struct {
	cells []uint32
	n     int
}

func idHash(id string) uint32 {
	// FNV-1a: ids are random, any decent spread will do.
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return h
}

func (x *idIndex) find(id string, idOf func(uint32) string) int64 {
	if len(x.cells) == 0 {
		return -1
	}
	mask := uint32(len(x.cells) - 1)
	for i := idHash(id) & mask; ; i = (i + 1) & mask {
		c := x.cells[i]
		if c == 0 {
			return -1
		}
		if idOf(c-1) == id {
			return int64(c - 1)
		}
	}
}

func (x *idIndex) insert(id string, idx uint32, idOf func(uint32) string) {
	if (x.n+1)*4 > len(x.cells)*3 {
		old := x.cells
		x.cells = make([]uint32, max(16, 2*len(old)))
		x.n = 0
		for _, c := range old {
			if c != 0 {
				x.insert(idOf(c-1), c-1, idOf)
			}
		}
	}
	mask := uint32(len(x.cells) - 1)
	i := idHash(id) & mask
	for x.cells[i] != 0 {
		i = (i + 1) & mask
	}
	x.cells[i] = idx + 1
	x.n++
}

func (x *idIndex) remove(id string, idOf func(uint32) string) {
	if len(x.cells) == 0 {
		return
	}
	mask := uint32(len(x.cells) - 1)
	i := idHash(id) & mask
	for {
		c := x.cells[i]
		if c == 0 {
			return
		}
		if idOf(c-1) == id {
			break
		}
		i = (i + 1) & mask
	}
	x.n--
	removeAt(x.cells, i, func(c uint32) uint32 { return idHash(idOf(c-1)) & mask })
}

// each calls fn with every slot index in the index.
func (x *idIndex) each(fn func(idx uint32)) {
	for _, c := range x.cells {
		if c != 0 {
			fn(c - 1)
		}
	}
}
