package loadgen

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
)

// The synthetic Internet of the evaluation set: countries, ASNs of several
// kinds and the /16 blocks they own. It does not depend on the seed, so an
// address always maps to the same country and ASN in every generated set.

type netKind uint8

const (
	kindMobile    netKind = iota // mobile carrier, addresses behind carrier-grade NAT
	kindISP                      // residential broadband
	kindBusiness                 // corporate networks
	kindCloud                    // cloud regions (CI runners, servers, batch jobs)
	kindCDN                      // CDN edges in front of browser traffic
	kindHosting                  // VPS/hosting providers (attackers, some servers)
	kindSASE                     // secure-web-gateway (SASE) egress PoPs: corporate users
	kindVPN                      // consumer VPN exits
	kindSatellite                // satellite ISP: one ASN, users geolocated to its ground stations
	nKinds
)

type country struct {
	code   string
	offset int // UTC offset in hours, for diurnal patterns
	weight float64
}

// block is one /16 of a country's ASN.
type block struct {
	base    uint32
	country int // index in world.countries
	asn     uint32
	kind    netKind
}

type world struct {
	countries []country
	blocks    []block
	byCountry [][]int   // block indexes per country
	byKind    [][][]int // [kind][country] block indexes
}

var worldCountries = []country{
	{"US", -6, 20}, {"CA", -5, 4}, {"MX", -6, 4}, {"BR", -3, 8}, {"AR", -3, 2}, {"CO", -5, 2}, {"CL", -4, 1.5},
	{"GB", 0, 6}, {"IE", 0, 1}, {"FR", 1, 5}, {"DE", 1, 6}, {"NL", 1, 2}, {"ES", 1, 3}, {"IT", 1, 3}, {"PL", 1, 2},
	{"SE", 1, 1.2}, {"NO", 1, 0.8}, {"FI", 2, 0.8}, {"RO", 2, 1}, {"UA", 2, 1.5}, {"TR", 3, 3}, {"RU", 3, 4},
	{"EG", 2, 2}, {"NG", 1, 3}, {"KE", 3, 1}, {"ZA", 2, 1.5}, {"MA", 0, 1}, {"SA", 3, 1.5}, {"AE", 4, 1},
	{"IN", 5, 12}, {"PK", 5, 2}, {"BD", 6, 2}, {"TH", 7, 2}, {"VN", 7, 2.5}, {"ID", 7, 5}, {"MY", 8, 1.5},
	{"SG", 8, 1}, {"PH", 8, 3}, {"CN", 8, 6}, {"HK", 8, 1}, {"TW", 8, 1.2}, {"KR", 9, 2.5}, {"JP", 9, 5},
	{"AU", 10, 2.5}, {"NZ", 12, 0.6},
}

// Cloud and CDN presence, by country code.
var (
	cloudRegions = []string{"US", "CA", "BR", "IE", "GB", "DE", "FR", "NL", "SE", "IN", "SG", "JP", "KR", "AU", "ZA", "AE"}
	cdnEdges     = []string{"US", "CA", "MX", "BR", "AR", "GB", "FR", "DE", "NL", "ES", "IT", "PL", "SE", "RO", "TR", "ZA", "NG", "KE", "AE", "IN", "SG", "ID", "HK", "JP", "KR", "AU"}
	hostingAt    = []string{"NL", "DE", "US", "RU", "SG", "FR", "UA", "RO", "VN", "HK", "BR", "IN"}
	// Added after the rest, so every address above keeps its country and ASN.
	saseAt      = []string{"US", "CA", "MX", "BR", "GB", "IE", "FR", "DE", "NL", "SE", "PL", "ES", "IT", "IN", "SG", "JP", "AU", "ZA", "AE", "HK"}
	vpnAt       = []string{"US", "CA", "BR", "AR", "GB", "IE", "FR", "DE", "NL", "ES", "IT", "PL", "SE", "NO", "RO", "UA", "TR", "ZA", "AE", "IN", "SG", "MY", "HK", "JP", "KR", "AU", "MX", "CO"}
	satelliteAt = []string{"US", "CA", "MX", "BR", "CL", "GB", "IE", "FR", "DE", "ES", "IT", "PL", "NG", "KE", "PH", "MY", "AU", "NZ", "JP"}
)

var theWorld = buildWorld()

func buildWorld() *world {
	w := &world{countries: worldCountries}
	idx := map[string]int{}
	for i, c := range w.countries {
		idx[c.code] = i
	}
	w.byCountry = make([][]int, len(w.countries))
	w.byKind = make([][][]int, nKinds)
	for k := range w.byKind {
		w.byKind[k] = make([][]int, len(w.countries))
	}
	next := uint32(23) << 24
	asn := uint32(20000)
	add := func(ci int, a uint32, k netKind) {
		for {
			first := next >> 24
			if first == 100 || first == 127 || first == 169 || first == 172 || first == 192 || first == 198 || first == 203 {
				next = (first + 1) << 24
				continue
			}
			break
		}
		w.blocks = append(w.blocks, block{base: next, country: ci, asn: a, kind: k})
		b := len(w.blocks) - 1
		w.byCountry[ci] = append(w.byCountry[ci], b)
		w.byKind[k][ci] = append(w.byKind[k][ci], b)
		next += 1 << 16
	}
	for ci := range w.countries {
		for range 2 { // two carriers, two blocks each
			asn += 7
			add(ci, asn, kindMobile)
			add(ci, asn, kindMobile)
		}
		for range 2 { // two broadband ISPs
			asn += 7
			add(ci, asn, kindISP)
			add(ci, asn, kindISP)
		}
		asn += 7
		add(ci, asn, kindBusiness)
	}
	for p := range 4 { // four cloud providers, one ASN each, a block per region
		asn += 7
		for i, code := range cloudRegions {
			if (i+p)%4 == 3 { // not every provider is everywhere
				continue
			}
			add(idx[code], asn, kindCloud)
		}
	}
	for range 2 { // two CDNs
		asn += 7
		for _, code := range cdnEdges {
			add(idx[code], asn, kindCDN)
		}
	}
	for _, code := range hostingAt { // one hosting company per country
		asn += 7
		add(idx[code], asn, kindHosting)
	}
	addSecondRound(idx, &asn, add)
	return w
}

// v6Prefix is the first 16 bits of the world's IPv6 addresses: a mobile
// carrier block b also holds 2a0d:b::/32 (one /64 per device).
const v6Prefix = 0x2a0d

// v6 returns an IPv6 address of mobile block b: a random /64 of its /32
// (a device) and a random interface id (a privacy address).
func (w *world) v6(rng *rand.Rand, b int) addr {
	r := rng.Uint64()
	return addr{v6: fmt.Sprintf("%x:%x:%x:%x:%x:%x:%x:%x", v6Prefix, b, r>>48&0xffff, r>>32&0xffff,
		r>>16&0xffff, r&0xffff, rng.IntN(0x10000), rng.IntN(0x10000)),
		country: w.blocks[b].country, asn: w.blocks[b].asn}
}

// addSecondRound adds the networks of the second round of populations,
// after all the others so that their addresses keep their countries and
// ASNs: SASE PoPs, consumer VPN exits and a satellite ISP.
func addSecondRound(idx map[string]int, asn *uint32, add func(ci int, a uint32, k netKind)) {
	for p := range 2 { // two SASE providers, one ASN each, a PoP block per country
		*asn += 7
		for i, code := range saseAt {
			if p == 1 && i%3 == 2 {
				continue
			}
			add(idx[code], *asn, kindSASE)
		}
	}
	for p := range 3 { // three consumer VPNs, exits in most of their countries
		*asn += 7
		for i, code := range vpnAt {
			if (i+p)%5 == 4 {
				continue
			}
			add(idx[code], *asn, kindVPN)
		}
	}
	*asn += 7 // one satellite ISP
	for _, code := range satelliteAt {
		add(idx[code], *asn, kindSatellite)
	}
}

// Lookup returns the country and ASN of an address of the synthetic world
// ("", 0 if it is not one of its addresses).
func Lookup(ip string) (string, uint32) {
	if a, err := netip.ParseAddr(ip); err == nil && a.Is6() && !a.Is4In6() {
		b16 := a.As16()
		hi, blk := int(b16[0])<<8|int(b16[1]), int(b16[2])<<8|int(b16[3])
		if hi != v6Prefix || blk >= len(theWorld.blocks) || theWorld.blocks[blk].kind != kindMobile {
			return "", 0
		}
		return theWorld.countries[theWorld.blocks[blk].country].code, theWorld.blocks[blk].asn
	}
	var parts [4]uint32
	n := 0
	for _, f := range splitDots(ip) {
		v, err := strconv.Atoi(f)
		if err != nil || v < 0 || v > 255 || n == 4 {
			return "", 0
		}
		parts[n] = uint32(v)
		n++
	}
	if n != 4 {
		return "", 0
	}
	base := parts[0]<<24 | parts[1]<<16
	for _, b := range theWorld.blocks {
		if b.base == base {
			return theWorld.countries[b.country].code, b.asn
		}
	}
	return "", 0
}

func splitDots(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// addr is an address inside a block, its country and ASN.
type addr struct {
	ip      uint32
	v6      string // an IPv6 address instead of ip
	country int
	asn     uint32
}

func (a addr) String() string {
	if a.v6 != "" {
		return a.v6
	}
	return ipString(a.ip)
}

func ipString(ip uint32) string {
	b := make([]byte, 0, 15)
	b = strconv.AppendUint(b, uint64(ip>>24), 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, uint64(ip>>16&255), 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, uint64(ip>>8&255), 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, uint64(ip&255), 10)
	return string(b)
}

// pick returns an address of block b: carriers and CDNs use small pools
// (carrier-grade NAT, edge egress), others the whole /16.
func (w *world) pick(rng *rand.Rand, b int) addr {
	bl := &w.blocks[b]
	var off uint32
	switch bl.kind {
	case kindMobile:
		off = uint32(rng.IntN(16))<<8 | uint32(1+rng.IntN(254)) // 16 /24s of CGNAT pool
	case kindCDN, kindSASE, kindVPN:
		off = uint32(rng.IntN(2))<<8 | uint32(1+rng.IntN(62))
	case kindSatellite:
		off = uint32(rng.IntN(16))<<8 | uint32(1+rng.IntN(254)) // CGNAT too
	default:
		off = uint32(rng.IntN(256))<<8 | uint32(1+rng.IntN(254))
	}
	return addr{ip: bl.base | off, country: bl.country, asn: bl.asn}
}

// blockOf returns a random block of a kind in a country, or -1.
func (w *world) blockOf(rng *rand.Rand, k netKind, ci int) int {
	bs := w.byKind[k][ci]
	if len(bs) == 0 {
		return -1
	}
	return bs[rng.IntN(len(bs))]
}

// countriesWith lists the countries having blocks of kind k.
func (w *world) countriesWith(k netKind) []int {
	var out []int
	for ci := range w.countries {
		if len(w.byKind[k][ci]) > 0 {
			out = append(out, ci)
		}
	}
	return out
}

// pickCountries draws n distinct countries weighted by Internet population,
// excluding those in not.
func (w *world) pickCountries(rng *rand.Rand, n int, not map[int]bool) []int {
	var out []int
	used := map[int]bool{}
	for k, v := range not {
		used[k] = v
	}
	for len(out) < n {
		total := 0.0
		for ci, c := range w.countries {
			if !used[ci] {
				total += c.weight
			}
		}
		if total == 0 {
			break
		}
		x := rng.Float64() * total
		chosen := -1
		for ci, c := range w.countries {
			if used[ci] {
				continue
			}
			chosen = ci
			if x -= c.weight; x <= 0 {
				break
			}
		}
		out = append(out, chosen)
		used[chosen] = true
	}
	return out
}
