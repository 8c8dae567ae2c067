package verifier

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/keys"
)

// oldCell is the anonymous limiter's cell before the fix: a fixed,
// unsalted hash of the full address, which an attacker could compute.
func oldCell(ip netip.Addr) uint64 {
	a := ip.As16()
	h := binary.LittleEndian.Uint64(a[:8])*0x9E3779B97F4A7C15 ^ binary.LittleEndian.Uint64(a[8:])*0xC2B2AE3D27D4EB4F
	h ^= h >> 29
	return h & (ipCells - 1)
}

func anonVerifier(t *testing.T, v6Bits int) *Verifier {
	t.Helper()
	tbl, err := keys.NewTable(keys.TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tbl.Apply([]bus.KeyUpdate{{EndOfSnapshot: true}})
	v, err := New(Config{Table: tbl, AnonIPv6Prefix: v6Bits, Routes: []Route{{Prefix: "/public", Anonymous: true, AnonRatePerS: 0.001, AnonBurst: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestAnonLimiterCollisionSearch: an address whose cell collides with a
// victim's, searched for offline against the old fixed hash, exhausted
// the victim's anonymous rate limit. With a seeded hash the search does
// not carry over: across 4 verifiers (4 random seeds) the attacker's
// precomputed address limits the victim in at most one (a chance
// collision, 1 in 65,536 each; the old code limited it in all 4).
func TestAnonLimiterCollisionSearch(t *testing.T) {
	victim := netip.MustParseAddr("203.0.113.7")
	var attacker netip.Addr
	// The offline search, bounded. The old hash of an IPv4 address hardly
	// depended on its last octets: the victim's neighbour collides.
	for c := victim.Next(); c.IsValid() && attacker == (netip.Addr{}); c = c.Next() {
		if oldCell(c) == oldCell(victim) {
			attacker = c
		}
		if c.As4()[1] != victim.As4()[1] {
			t.Fatal("no collision in the victim's /16")
		}
	}
	limited := 0
	for range 4 {
		v := anonVerifier(t, 0)
		for range 3 { // burst 2: the third is refused
			v.Verify(&Request{ClientIP: attacker, Path: "/public/x", Now: 1e18})
		}
		if d := v.Verify(&Request{ClientIP: victim, Path: "/public/x", Now: 1e18}); d.Outcome != event.OutcomeValid {
			limited++
		}
	}
	if limited > 1 {
		t.Errorf("the collision %s found offline limited the victim %s in %d of 4 verifiers", attacker, victim, limited)
	}

	// Salting is what changes the cell: with one seed the key maps to one
	// cell, with different seeds not always the same.
	b1, b2 := newIPBuckets(1, 1, 0), newIPBuckets(1, 1, 0)
	if b1.cell(victim) != b1.cell(victim) {
		t.Fatal("one seed, two cells")
	}
	b2.seed = b1.seed
	same := 0
	for i := range 8 {
		ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		if cellIndex(b1, ip) == cellIndex(b2, ip) {
			same++
		}
	}
	if same != 8 {
		t.Errorf("the same seed gave different cells for %d of 8 addresses", 8-same)
	}
	b3 := newIPBuckets(1, 1, 0) // its own random seed
	differ := false
	for i := range 8 {
		ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		differ = differ || cellIndex(b1, ip) != cellIndex(b3, ip)
	}
	if !differ {
		t.Error("two random seeds put 8 addresses in the same cells")
	}
	// The anonymous path still does not allocate.
	v := anonVerifier(t, 0)
	ip6 := netip.MustParseAddr("2001:db8::1")
	if n := testing.AllocsPerRun(100, func() { v.Verify(&Request{ClientIP: ip6, Path: "/public/x"}) }); n != 0 {
		t.Errorf("anonymous Verify: %v allocs", n)
	}
}

// cellIndex is the index of ip's cell in b.
func cellIndex(b *ipBuckets, ip netip.Addr) int {
	c := b.cell(ip)
	for i := range b.cells {
		if &b.cells[i] == c {
			return i
		}
	}
	panic("cell not in b")
}

// TestAnonLimiterIPv6Network: one IPv6 /64 is one anonymous client, so
// rotating addresses inside it does not multiply the rate (before the fix
// every address had its own bucket); another /64 has its own;
// AnonIPv6Prefix changes the size.
func TestAnonLimiterIPv6Network(t *testing.T) {
	v := anonVerifier(t, 0)
	for i, want := range []event.Outcome{event.OutcomeValid, event.OutcomeValid, event.OutcomeRateLimited, event.OutcomeRateLimited} {
		ip := netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2:%x::%x", i*977, i+1))
		if d := v.Verify(&Request{ClientIP: ip, Path: "/public/x", Now: 1e18}); d.Outcome != want {
			t.Errorf("request %d from %s in one /64: %v, want %v", i, ip, d.Outcome, want)
		}
	}
	if d := v.Verify(&Request{ClientIP: netip.MustParseAddr("2001:db8:1:3::1"), Path: "/public/x", Now: 1e18}); d.Outcome != event.OutcomeValid {
		t.Errorf("another /64: %v", d.Outcome)
	}
	// An IPv4-mapped address is its IPv4 address.
	v4 := anonVerifier(t, 0)
	v4.Verify(&Request{ClientIP: netip.MustParseAddr("192.0.2.1"), Path: "/public/x", Now: 1e18})
	v4.Verify(&Request{ClientIP: netip.MustParseAddr("::ffff:192.0.2.1"), Path: "/public/x", Now: 1e18})
	if d := v4.Verify(&Request{ClientIP: netip.MustParseAddr("192.0.2.1"), Path: "/public/x", Now: 1e18}); d.Outcome != event.OutcomeRateLimited {
		t.Errorf("IPv4 and its mapped form are not one client: %v", d.Outcome)
	}
	// --anonymous-ipv6-prefix 48: the whole /48 is one client.
	v48 := anonVerifier(t, 48)
	v48.Verify(&Request{ClientIP: netip.MustParseAddr("2001:db8:1:2::1"), Path: "/public/x", Now: 1e18})
	v48.Verify(&Request{ClientIP: netip.MustParseAddr("2001:db8:1:3::1"), Path: "/public/x", Now: 1e18})
	if d := v48.Verify(&Request{ClientIP: netip.MustParseAddr("2001:db8:1:ffff::1"), Path: "/public/x", Now: 1e18}); d.Outcome != event.OutcomeRateLimited {
		t.Errorf("/48: %v", d.Outcome)
	}
	tbl, err := keys.NewTable(keys.TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []int{-1, 8, 129} {
		if _, err := New(Config{Table: tbl, AnonIPv6Prefix: bad}); err == nil {
			t.Errorf("AnonIPv6Prefix %d accepted", bad)
		}
	}
}
