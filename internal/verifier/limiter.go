package verifier

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
)

// gcra is the generic cell rate algorithm: a token bucket kept as one
// theoretical arrival time (TAT) so it can be updated with a single CAS.
// interval is the cost of one request (1s/rate), burst the bucket size.
//
// It returns whether the request may pass, how many more would pass right
// now, how long until the bucket is full again, and, when refused, how long
// until one request would pass.
func gcra(tat *atomic.Int64, now, interval int64, burst uint32) (ok bool, remaining uint32, resetNs, retryNs int64) {
	capacity := interval * int64(burst)
	for {
		old := tat.Load()
		t := max(old, now)
		next := t + interval
		if next-now > capacity {
			return false, 0, t - now, next - now - capacity
		}
		if tat.CompareAndSwap(old, next) {
			return true, uint32((capacity - (next - now)) / interval), next - now, 0
		}
	}
}

// ipBuckets is a fixed array of GCRA cells indexed by a hash of the client
// address: bounded memory whatever the number of addresses; colliding
// addresses share a cell (stricter, never looser).
type ipBuckets struct {
	interval int64
	burst    uint32
	cells    []atomic.Int64
}

const ipCells = 1 << 16

func newIPBuckets(perS float64, burst uint32) *ipBuckets {
	iv := int64(1e9 / perS)
	if iv < 1 {
		iv = 1
	}
	if burst == 0 {
		burst = uint32(max(1, min(perS, 1<<31)))
	}
	if limit := uint64(1<<62) / uint64(iv); uint64(burst) > limit {
		burst = uint32(limit)
	}
	return &ipBuckets{interval: iv, burst: burst, cells: make([]atomic.Int64, ipCells)}
}

func (b *ipBuckets) cell(ip netip.Addr) *atomic.Int64 {
	a := ip.As16()
	h := binary.LittleEndian.Uint64(a[:8])*0x9E3779B97F4A7C15 ^ binary.LittleEndian.Uint64(a[8:])*0xC2B2AE3D27D4EB4F
	h ^= h >> 29
	return &b.cells[h&(ipCells-1)]
}
