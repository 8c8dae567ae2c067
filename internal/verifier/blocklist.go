package verifier

import (
	"context"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// BlockList holds client addresses and networks blocked by detection
// decisions, each until a deadline. Reads are one atomic load (and nothing
// more while the list is empty); writes copy the snapshot. A rule that
// groups by network (net24(ip)) blocks the whole network: its decision's
// client_ip is a CIDR such as 203.0.113.0/24. A rule that groups by asn
// blocks the network operator: its client_ip is AS<n> such as AS21638,
// matched against the request's AS number (from --asn-header or the ASN
// database; an unknown one, 0, never matches).
type BlockList struct {
	m  atomic.Pointer[blockSnap]
	mu sync.Mutex
}

type blockSnap struct {
	addrs map[netip.Addr]int64
	// nets by prefix length, longest first: a lookup masks the address
	// once per length in use (typically one: /24, or /48 for IPv6).
	nets  map[netip.Prefix]int64
	bits  []int
	asns  map[uint32]int64
	count int
}

// Block blocks ip until the given time.
func (b *BlockList) Block(ip netip.Addr, until time.Time) {
	b.BlockPrefix(netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()), until)
}

// BlockPrefix blocks every address of p until the given time (a full-length
// prefix is one address).
func (b *BlockList) BlockPrefix(p netip.Prefix, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.copyLive()
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked()
	if p.Bits() == p.Addr().BitLen() {
		n.addrs[p.Addr()] = max(n.addrs[p.Addr()], until.UnixNano())
	} else {
		n.nets[p] = max(n.nets[p], until.UnixNano())
	}
	b.store(n)
}

// BlockASN blocks every request from AS number asn (> 0) until the given
// time.
func (b *BlockList) BlockASN(asn uint32, until time.Time) {
	if asn == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.copyLive()
	n.asns[asn] = max(n.asns[asn], until.UnixNano())
	b.store(n)
}

// copyLive copies the unexpired entries of the current snapshot (b.mu held).
func (b *BlockList) copyLive() *blockSnap {
	now := time.Now().UnixNano()
	n := &blockSnap{addrs: map[netip.Addr]int64{}, nets: map[netip.Prefix]int64{}, asns: map[uint32]int64{}}
	if old := b.m.Load(); old != nil {
		for k, v := range old.addrs {
			if v > now {
				n.addrs[k] = v
			}
		}
		for k, v := range old.nets {
			if v > now {
				n.nets[k] = v
			}
		}
		for k, v := range old.asns {
			if v > now {
				n.asns[k] = v
			}
		}
	}
	return n
}

// store publishes n (b.mu held).
func (b *BlockList) store(n *blockSnap) {
	seen := map[int]bool{}
	for k := range n.nets {
		if !seen[k.Bits()] {
			seen[k.Bits()] = true
			n.bits = append(n.bits, k.Bits())
		}
	}
	n.count = len(n.addrs) + len(n.nets) + len(n.asns)
	b.m.Store(n)
}

// unmapBits is how many bits a v4-mapped v6 prefix loses when unmapped.
func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// Blocked reports whether a request from ip in AS number asn (0: unknown)
// is blocked at now (unix ns), by address, by network or by ASN.
func (b *BlockList) Blocked(ip netip.Addr, asn uint32, now int64) bool {
	m := b.m.Load()
	if m == nil || m.count == 0 {
		return false
	}
	if asn != 0 && len(m.asns) != 0 {
		if until, ok := m.asns[asn]; ok && now < until {
			return true
		}
	}
	ip = ip.Unmap()
	if until, ok := m.addrs[ip]; ok && now < until {
		return true
	}
	for _, bits := range m.bits {
		if bits > ip.BitLen() {
			continue
		}
		p, err := ip.Prefix(bits)
		if err != nil {
			continue
		}
		if until, ok := m.nets[p]; ok && now < until {
			return true
		}
	}
	return false
}

// HasASNs reports whether some ASN is (or was until recently) blocked: only
// then does a request's AS number need to be known before it is decided.
func (b *BlockList) HasASNs() bool {
	m := b.m.Load()
	return m != nil && len(m.asns) != 0
}

// Len is the number of entries (some may have expired).
func (b *BlockList) Len() int {
	if m := b.m.Load(); m != nil {
		return m.count
	}
	return 0
}

// parseBlockTarget reads a decision's client_ip: an address, a CIDR, or
// AS<n> (n > 0, returned as asn with an invalid prefix).
func parseBlockTarget(s string) (p netip.Prefix, asn uint32, ok bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), 0, true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), 0, true
	}
	if len(s) > 2 && s[:2] == "AS" && s[2] >= '1' && s[2] <= '9' {
		if n, err := strconv.ParseUint(s[2:], 10, 32); err == nil {
			return netip.Prefix{}, uint32(n), true
		}
	}
	return netip.Prefix{}, 0, false
}

// Apply applies one encoded keymeterv1.Decision: enforced block_ip
// decisions block their client address, or their network when client_ip
// is a CIDR, or their AS number when it is AS<n>, for their duration (1h
// when none).
func (b *BlockList) Apply(data []byte, log *slog.Logger) {
	var d keymeterv1.Decision
	if err := proto.Unmarshal(data, &d); err != nil {
		log.Warn("skipping undecodable decision", "err", err)
		return
	}
	if d.GetAction() != keymeterv1.Action_ACTION_BLOCK_IP || d.GetMode() != keymeterv1.Mode_MODE_ENFORCE {
		return
	}
	p, asn, ok := parseBlockTarget(d.GetClientIp())
	if !ok {
		log.Warn("block_ip decision without a valid client_ip (an address, a CIDR or AS<n>)", "decision", d.GetId(), "client_ip", d.GetClientIp())
		return
	}
	dur := time.Duration(d.GetDurationMs()) * time.Millisecond
	if dur <= 0 {
		dur = time.Hour
	}
	start := time.Now()
	if d.GetTimeUnixNano() > 0 {
		start = time.Unix(0, d.GetTimeUnixNano())
	}
	if asn != 0 {
		b.BlockASN(asn, start.Add(dur))
		log.Info("network operator blocked by detection", "asn", asn, "until", start.Add(dur), "rule", d.GetRuleId(), "decision", d.GetId())
		return
	}
	b.BlockPrefix(p, start.Add(dur))
	log.Info("client address blocked by detection", "client_ip", p.String(), "until", start.Add(dur), "rule", d.GetRuleId(), "decision", d.GetId())
}

// Run applies decisions from the bus until ctx ends.
//
// The decisions of the last day are applied first, so a verifier started
// after a block_ip decision still enforces it (each block lasts from its
// decision's time, so expired ones are no-ops).
func (b *BlockList) Run(ctx context.Context, ds bus.Decisions, log *slog.Logger) error {
	return ds.SubscribeDecisionsSince(ctx, time.Now().Add(-24*time.Hour), func(data []byte) { b.Apply(data, log) })
}
