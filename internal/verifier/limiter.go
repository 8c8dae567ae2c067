package verifier

import (
	"hash/maphash"
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

// ipBuckets is a fixed array of GCRA cells indexed by a keyed hash of the
// client: bounded memory whatever the number of addresses; colliding
// clients share a cell (stricter, never looser). A client is an IPv4
// address or an IPv6 network of v6Bits (default /64, what one subscriber
// or host usually holds): rotating addresses inside one's /64 does not
// multiply the rate. The hash is seeded at random per bucket set (maphash),
// so colliding addresses cannot be searched for offline to rate-limit a
// victim.
type ipBuckets struct {
	interval int64
	burst    uint32
	v6Bits   int
	seed     maphash.Seed
	cells    []atomic.Int64
}

const ipCells = 1 << 16

// DefaultAnonIPv6Prefix is the IPv6 network one anonymous client is
// limited as (Config.AnonIPv6Prefix).
const DefaultAnonIPv6Prefix = 64

func newIPBuckets(perS float64, burst uint32, v6Bits int) *ipBuckets {
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
	if v6Bits <= 0 || v6Bits > 128 {
		v6Bits = DefaultAnonIPv6Prefix
	}
	return &ipBuckets{interval: iv, burst: burst, v6Bits: v6Bits, seed: maphash.MakeSeed(), cells: make([]atomic.Int64, ipCells)}
}

// client is the key of ip's cell: the IPv4 address (an IPv4-mapped IPv6
// address is its IPv4 address), or the IPv6 address masked to v6Bits.
func (b *ipBuckets) client(ip netip.Addr) [17]byte {
	var k [17]byte
	ip = ip.Unmap()
	if ip.Is4() {
		a := ip.As4()
		k[0] = 4
		copy(k[1:], a[:])
		return k
	}
	if p, err := ip.Prefix(b.v6Bits); err == nil {
		ip = p.Addr()
	}
	a := ip.As16()
	k[0] = 6
	copy(k[1:], a[:])
	return k
}

func (b *ipBuckets) cell(ip netip.Addr) *atomic.Int64 {
	k := b.client(ip)
	return &b.cells[maphash.Bytes(b.seed, k[:])&(ipCells-1)]
}
