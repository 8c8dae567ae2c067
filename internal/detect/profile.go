package detect

import (
	"errors"
	"reflect"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"hash/maphash"
	"math"
	"math/bits"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// Profiles: what is normal for one key (or, for traffic without a key, one
// client network: the /24, or /48 for IPv6), learned online from the events
// themselves, so the same numbers exist in the live detector and in a
// backtest that starts from nothing. A rule compares a key with its own
// normal through the CEL variable `profile` (see rules/README.md).
//
// One profile is a fixed-size, pointer-free struct (about 900 bytes, see
// TestProfileMemory): the usual spread per 10-minute window as decaying
// histograms (robust quantiles over roughly the last 1–2 weeks of active
// windows), the volume by hour of week and by hour of day (seasonality: a
// nightly batch burst at its usual hour is normal), and the last countries,
// ASNs and networks seen with first/last-seen times.

const (
	profWindow   = 600 // seconds: the spread window the quantiles describe
	nHist        = 16
	histHalveAt  = 1024 // active windows; halving then keeps ~1–2 weeks
	nSeen        = 9
	defaultGrace = 3600       // s: a value first seen this recently is still new
	streakGap    = 86400      // s: a longer gap starts a new streak of use
	seenForget   = 30 * 86400 // s: entries idle longer are dropped first
	runGap       = 15 * 60    // s: a longer pause ends a run of use of a new place
)

// histUpper are the upper bounds of the spread histograms' buckets.
var histUpper = [nHist]float64{1, 2, 3, 4, 5, 6, 8, 10, 13, 17, 23, 32, 48, 80, 160, 2000}

// seenEntry is one value (a country, an ASN, a network hash) seen for a
// subject: when its current streak of use began, when it was last seen,
// and when it was last seen before this streak (0: never).
type seenEntry struct {
	v, first, last, before uint32
}

type seenSet struct {
	e    [nSeen]seenEntry
	n    uint8
	over uint32 // last time a value still in use was pushed out: the set is not exhaustive
}

// goneFilter is a 128-bit Bloom filter (two bits per value) of the values
// a seenSet pushed out once established: when the set is not exhaustive, a
// value in neither the set nor the filter was never in use (a key that
// rotates through more ASNs than the set holds still sees a new one).
type goneFilter [2]uint64

// goneBits are value v's two bits in a goneFilter.
func goneBits(v uint32) (uint32, uint32) {
	h := uint64(v) * 0x9e3779b97f4a7c15
	return uint32(h >> 57), uint32(h>>50) & 127
}

func (g *goneFilter) add(v uint32) {
	a, b := goneBits(v)
	g[a>>6] |= 1 << (a & 63)
	g[b>>6] |= 1 << (b & 63)
}

// has reports whether v may have been pushed out once established; true
// too when the filter is too full to tell (over half its bits set).
func (g *goneFilter) has(v uint32) bool {
	if bits.OnesCount64(g[0])+bits.OnesCount64(g[1]) > 64 {
		return true
	}
	a, b := goneBits(v)
	return g[a>>6]&(1<<(a&63)) != 0 && g[b>>6]&(1<<(b&63)) != 0
}

// profile is one subject's learned behaviour. Times are Unix seconds.
// What every event touches is in the first 64 bytes, the spread bitmaps in
// the next 64; the struct's size is a multiple of 64 so that chunks keep
// that alignment.
type profile struct {
	hash          uint64 // the subject's hash; 0: a free slot
	created, last uint32
	events        uint32
	windows       uint8 // active windows observed (saturates; maturity needs 12)
	peakAge       uint8 // windows closed since peakWin last rose (saturates)
	flags         uint8 // flagNew, flagNet
	peakPrev      uint8 // see peakWin
	// The last event's attributes: most events repeat them, and then the
	// seen sets need no update for a minute.
	lastCty   uint16
	runCty    uint16 // the recent country of the current run (runFirst)
	lastASN   uint32
	lastIP    uint32 // hash of the last client address
	lastSeenT uint32
	ctyFirst  uint32 // when lastCty's current streak began
	asnFirst  uint32
	win       uint32 // current spread window (unix s / profWindow)
	hour      uint32 // current hour (unix s / 3600)
	hourN     uint32 // events in it so far
	lastUsual uint32 // last event from an established country and ASN

	// second line: linear-counting bitmaps of the current window
	winCty uint64
	winASN [2]uint64
	winIP  [4]uint64
	winN   uint32 // events in the current window

	hist [3][nHist]uint16 // spread per window: countries, ASNs, IPs
	how  [168]uint8
	hod  [24]uint8
	// peakWin is the busiest 10-minute window, decaying by 0.1% per active
	// window (about 13% a day for a key busy all day). peakPrev (encoded
	// like the seasonality slots) is what it was before its latest run of
	// rises: rules see that while the rise is recent (a spike being judged
	// must not raise the bar it is judged by).
	peakWin float32

	countries, asns, nets seenSet
	asnGone               goneFilter // ASNs pushed out of asns once established
	// runFirst is when runCty, a country still new for the subject (first
	// seen within the novelty grace), was last taken up again after a pause
	// of more than runGap: how long a new place has been in continuous use.
	runFirst uint32
}

// profile.flags
const (
	flagNew = 1 << iota // first seen after the engine had an hour of history
	flagNet             // a client network's profile, not a key's
)

func (p *profile) isNet() bool { return p.flags&flagNet != 0 }

const (
	hCountries = iota
	hASNs
	hIPs
)

// Seasonality slots hold a log-scale count: 0 never observed, else
// 1+round(8·log2(1+n)), about 9% resolution up to billions.
var decTab = func() (t [256]float64) {
	for v := 1; v < 256; v++ {
		t[v] = math.Exp2(float64(v-1)/8) - 1
	}
	return
}()

func encCount(n float64) uint8 {
	v := 1 + math.Round(8*math.Log2(1+n))
	if v > 255 {
		v = 255
	}
	return uint8(v)
}

func (p *profile) fold(hour uint32, n float64) {
	for _, s := range []*uint8{&p.how[hour%168], &p.hod[hour%24]} {
		if *s == 0 {
			*s = encCount(n)
		} else {
			*s = encCount(0.5*decTab[*s] + 0.5*n)
		}
	}
}

// observe counts one event of the subject at t (Unix seconds).
func (p *profile) observe(t uint32, ip string, asn uint32, country string, seed maphash.Seed, grace uint32) {
	if p.created == 0 {
		p.created, p.hour, p.win = t, t/3600, t/profWindow
	}
	if t < p.last {
		t = p.last // late events count in the present
	}
	p.last = t
	p.events++
	if h := t / 3600; h != p.hour {
		p.fold(p.hour, float64(p.hourN))
		gap := h - p.hour - 1
		for k := uint32(1); k <= min(gap, 168); k++ {
			p.fold(p.hour+k, 0)
		}
		p.hour, p.hourN = h, 0
	}
	p.hourN++
	if w := t / profWindow; w != p.win {
		p.closeWindow()
		p.win = w
	}
	p.winN++
	ipHash := maphash.String(seed, ip)
	p.winIP[(ipHash>>6)&3] |= 1 << (ipHash & 63)
	ah := uint64(asn) * 0x9e3779b97f4a7c15
	p.winASN[(ah>>63)&1] |= 1 << (ah >> 57 & 63)
	var ch uint64
	if len(country) >= 2 {
		ch = (uint64(country[0])<<8 | uint64(country[1])) * 0x9e3779b97f4a7c15
		p.winCty |= 1 << (ch >> 58)
	}
	var cty uint16
	if len(country) >= 2 {
		cty = uint16(country[0])<<8 | uint16(country[1])
	}
	if cty != p.lastCty || asn != p.lastASN || uint32(ipHash) != p.lastIP || t-p.lastSeenT >= 60 {
		netHash := uint32(maphash.String(seed, netPart(ip))) | 1
		p.lastCty, p.lastASN, p.lastIP, p.lastSeenT = cty, asn, uint32(ipHash), t
		p.ctyFirst, p.asnFirst = 0, 0 // no country or ASN: nothing new
		if cty != 0 {
			prev := p.countries.lastOf(uint32(cty))
			p.ctyFirst = p.countries.add(uint32(cty), t, grace, nil)
			if t-p.ctyFirst < grace && (uint16(cty) != p.runCty || prev == 0 || t-prev > runGap) {
				p.runCty, p.runFirst = cty, t
			}
		}
		if asn != 0 {
			p.asnFirst = p.asns.add(asn, t, grace, &p.asnGone)
		}
		p.nets.add(netHash, t, grace, nil)
	}
	if p.ctyFirst+grace <= t && p.asnFirst+grace <= t {
		p.lastUsual = t
	}
}

// linearCount estimates the distinct values set in a bitmap of m bits.
func linearCount(bits []uint64) float64 {
	m, ones := float64(64*len(bits)), 0
	for _, b := range bits {
		for ; b != 0; b &= b - 1 {
			ones++
		}
	}
	z := m - float64(ones)
	if z == 0 {
		return m * math.Log(m)
	}
	return -m * math.Log(z/m)
}

func (p *profile) closeWindow() {
	if p.winIP == [4]uint64{} {
		return // no events (cannot happen after the first)
	}
	p.record(hCountries, linearCount([]uint64{p.winCty}))
	p.record(hASNs, linearCount(p.winASN[:]))
	p.record(hIPs, linearCount(p.winIP[:]))
	if decayed := p.peakWin * 0.999; float32(p.winN) > 1.25*decayed {
		// A rise: rules go on seeing the peak from before it for a while.
		if p.peakAge >= peakLag {
			p.peakPrev = encCount(float64(decayed))
		}
		p.peakWin, p.peakAge = float32(p.winN), 0
	} else if float32(p.winN) > decayed {
		p.peakWin = float32(p.winN) // a new peak, but no jump
		if p.peakAge < math.MaxUint8 {
			p.peakAge++
		}
	} else {
		p.peakWin = decayed
		if p.peakAge < math.MaxUint8 {
			p.peakAge++
		}
	}
	p.winIP, p.winASN, p.winCty, p.winN = [4]uint64{}, [2]uint64{}, 0, 0
	if p.windows < math.MaxUint8 {
		p.windows++
	}
}

func (p *profile) record(h int, v float64) {
	hs := &p.hist[h]
	b := 0
	for b < nHist-1 && v > histUpper[b]+0.5 {
		b++
	}
	total := 0
	for _, c := range hs {
		total += int(c)
	}
	if total >= histHalveAt {
		for i := range hs {
			hs[i] /= 2
		}
	}
	hs[b]++
}

// quantile is the q-quantile of a spread histogram (the bucket's upper
// bound), 0 when no window was recorded.
func (p *profile) quantile(h int, q float64) float64 {
	hs := &p.hist[h]
	total := 0
	for _, c := range hs {
		total += int(c)
	}
	if total == 0 {
		return 0
	}
	need := int(math.Ceil(q * float64(total)))
	acc := 0
	for i, c := range hs {
		acc += int(c)
		if acc >= need {
			return histUpper[i]
		}
	}
	return histUpper[nHist-1]
}

// add records v at t and returns when its current streak began.
func (s *seenSet) add(v, t, grace uint32, gone *goneFilter) uint32 {
	for i := 0; i < int(s.n); i++ {
		e := &s.e[i]
		if e.v == v {
			if t > e.last && t-e.last > streakGap {
				e.before, e.first = e.last, t
			}
			if t > e.last {
				e.last = t
			}
			return e.first
		}
	}
	if int(s.n) < nSeen {
		s.e[s.n] = seenEntry{v: v, first: t, last: t}
		s.n++
		return t
	}
	// Full. A newcomer (first seen within the novelty grace) gives way to
	// another: a burst of new values (an attack from many countries) stays
	// new instead of pushing the key's established values out. Otherwise
	// the stalest value goes, and if it was in use within the last 30 days
	// the set is no longer exhaustive: seen answers true for a while.
	old := -1
	for i := range s.e {
		if t-s.e[i].first < grace && s.e[i].before == 0 && (old < 0 || s.e[i].first > s.e[old].first) {
			old = i
		}
	}
	if old < 0 {
		old = 0
		for i := range s.e {
			if s.e[i].last < s.e[old].last {
				old = i
			}
		}
		if t-s.e[old].last < seenForget {
			s.over = t
		}
	}
	if e := &s.e[old]; gone != nil && (e.before != 0 || t-e.first >= grace) {
		gone.add(e.v) // established: remembered as once in use
	}
	first := t
	if gone != nil && gone.has(v) && t > grace {
		first = t - grace // pushed out once established, back: not new
	}
	s.e[old] = seenEntry{v: v, first: first, last: t}
	return first
}

// lastOf is when v was last seen (0: not in the set).
func (s *seenSet) lastOf(v uint32) uint32 {
	for i := 0; i < int(s.n); i++ {
		if s.e[i].v == v {
			return s.e[i].last
		}
	}
	return 0
}

// seen reports whether v was in use for the subject before the last hour,
// within the last days. A set that had to forget values in use within
// that period answers true: it cannot tell.
func (s *seenSet) seen(v, now uint32, days float64, grace uint32, gone *goneFilter) bool {
	span := uint32(max(days, 0) * 86400)
	for i := 0; i < int(s.n); i++ {
		e := &s.e[i]
		if e.v != v {
			continue
		}
		if e.first <= now && now-e.first >= grace && since(now, e.last) <= span+grace {
			return true
		}
		if e.before != 0 && e.before <= now && now-e.before <= span {
			return true
		}
		break
	}
	// Not in the set as established. A set that had to push out values
	// still in use cannot tell by itself: seen, unless its filter of
	// pushed-out values (gone, no false "never seen", rare false "seen")
	// says otherwise. Only ASNs keep one: a key with more countries or
	// networks than the set holds is global enough that a new one is no
	// evidence.
	return s.over != 0 && since(now, s.over) < span && (gone == nil || gone.has(v))
}

// hourBaseline is the usual number of events in an hour like the one of
// now: the most of the same hour of week and the same and neighbouring
// hours of day (batch jobs drift).
func (p *profile) hourBaseline(now uint32) float64 {
	h := now / 3600
	v := decTab[p.how[h%168]]
	for _, d := range []uint32{0, 1, 23} {
		v = max(v, decTab[p.hod[(h+d)%24]])
	}
	return v
}

// peakHour is the busiest hour of day in the profile.
func (p *profile) peakHour() float64 {
	var m uint8
	for _, v := range p.hod {
		m = max(m, v)
	}
	return decTab[m]
}

// ProfileConfig tunes the engine's profiles.
type ProfileConfig struct {
	// Disabled turns profiles off: profile.* reads as an empty, immature
	// profile.
	Disabled bool
	// Maturity is how long a subject must have been observed before
	// profile.mature holds (and at least 12 active 10-minute windows).
	// Zero means 12h.
	Maturity time.Duration
	// Seasonal is how long before profile.seasonal holds: every hour of
	// the day seen once. Zero means 24h.
	Seasonal time.Duration
	// MaxProfiles caps the profile table (keys and networks); the stalest
	// of a few sampled profiles makes room. Zero means 1,000,000 (about
	// 950 MB).
	MaxProfiles int
	// NoveltyGrace is how long a country, ASN or network stays new after
	// it was first seen. Zero means 1h. (keymeter dev shortens it, and the
	// maturity, so that its demo attacks are acted on within seconds.)
	NoveltyGrace time.Duration
}

// profiles is the engine's table of profiles: keys and client networks in
// one flat index (by 64-bit hash of "k"+key id or "n"+network; collisions
// are as harmless as in the rule tables), the profiles themselves in
// pointer-free chunks that never move, so the garbage collector does not
// scan them and a pointer stays valid while the profile lives.
// Single-threaded, like the engine.
type profiles struct {
	cfg       ProfileConfig
	maturity  uint32
	seasonal  uint32
	index     *index
	chunks    [][]profile
	n         int     // slots handed out
	free      []int32 // slots given back
	live      int
	nets      int
	seed      maphash.Seed
	start     uint32 // first event time seen by the engine
	lastSweep uint32
	evictions uint64
	rng       uint64
	// minWindows: active 10-minute windows a mature profile has seen, 12
	// (or fewer when the maturity is shorter than two hours).
	minWindows uint32
	grace      uint32 // NoveltyGrace in seconds
	// crowd: see crowdAdd.
	crowd       [2][nCrowd]uint32
	crowdPeriod uint32
}

const profChunk = 1024

func newProfiles(cfg ProfileConfig, seed maphash.Seed) *profiles {
	ps := &profiles{cfg: cfg, index: newIndex(), seed: seed, rng: 0x9e3779b97f4a7c15}
	ps.maturity, ps.seasonal = uint32(cfg.Maturity/time.Second), uint32(cfg.Seasonal/time.Second)
	if ps.maturity == 0 {
		ps.maturity = 12 * 3600
	}
	if ps.seasonal == 0 {
		ps.seasonal = 24 * 3600
	}
	ps.minWindows = min(12, ps.maturity/profWindow)
	ps.grace = uint32(cfg.NoveltyGrace / time.Second)
	if ps.grace == 0 {
		ps.grace = defaultGrace
	}
	if ps.cfg.MaxProfiles == 0 {
		ps.cfg.MaxProfiles = 1_000_000
	}
	return ps
}

func (ps *profiles) at(i int32) *profile { return &ps.chunks[i/profChunk][i%profChunk] }

func (ps *profiles) alloc(h uint64, t uint32, net bool) *profile {
	if ps.live >= ps.cfg.MaxProfiles {
		ps.evictOne()
	}
	var i int32
	if n := len(ps.free); n > 0 {
		i = ps.free[n-1]
		ps.free = ps.free[:n-1]
	} else {
		if ps.n%profChunk == 0 {
			ps.chunks = append(ps.chunks, make([]profile, profChunk))
		}
		i = int32(ps.n)
		ps.n++
	}
	p := ps.at(i)
	*p = profile{hash: h}
	if t-ps.start >= 3600 {
		p.flags |= flagNew
	}
	if net {
		p.flags |= flagNet
	}
	ps.index.set(h, i)
	ps.live++
	if net {
		ps.nets++
	}
	return p
}

func (ps *profiles) release(i int32) {
	p := ps.at(i)
	ps.index.del(p.hash)
	if p.isNet() {
		ps.nets--
	}
	*p = profile{}
	ps.free = append(ps.free, i)
	ps.live--
}

// evictOne drops the stalest of a few sampled profiles.
func (ps *profiles) evictOne() {
	victim := int32(-1)
	for k := 0; k < 8; k++ {
		ps.rng ^= ps.rng << 13
		ps.rng ^= ps.rng >> 7
		ps.rng ^= ps.rng << 17
		i := int32(ps.rng % uint64(ps.n))
		if p := ps.at(i); p.hash != 0 && (victim < 0 || p.last < ps.at(victim).last) {
			victim = i
		}
	}
	if victim >= 0 {
		ps.release(victim)
		ps.evictions++
	}
}

// netPart is the text of ip's /24 (IPv4) or /48 (IPv6) network part.
func netPart(ip string) string {
	dots, colons := 0, 0
	for i := 0; i < len(ip); i++ {
		switch ip[i] {
		case '.':
			if dots++; dots == 3 {
				return ip[:i]
			}
		case ':':
			if colons++; colons == 3 {
				return ip[:i]
			}
		}
	}
	return ip
}

// keyed: requests that proved possession of the key describe how the key
// is used.
func keyed(ev *event.Event) bool {
	if ev.KeyID == "" {
		return false
	}
	switch ev.Outcome {
	case event.OutcomeMalformed, event.OutcomeUnknown, event.OutcomeMissing:
		return false
	}
	return true
}

func (ps *profiles) subjectHash(ev *event.Event) uint64 {
	if ev.KeyID != "" {
		return fixHash(maphash.String(ps.seed, ev.KeyID))
	}
	// Networks hash apart from keys: a key id never equals a network's text
	// with this suffix mixed in.
	return fixHash(maphash.String(ps.seed, netPart(ev.ClientIP)) ^ 0x5bd1e9955bd1e995)
}

// lookup finds the profile slots of evs (−1: none yet), all lookups first
// so that their cache misses overlap.
func (ps *profiles) lookup(evs []event.Event, ts []int64, hs []uint64, out []*profile) {
	for i := range evs {
		out[i] = nil
		if ts[i] <= 0 {
			continue
		}
		hs[i] = ps.subjectHash(&evs[i])
		if j, ok := ps.index.get(hs[i]); ok {
			out[i] = ps.at(j)
		}
	}
	var touch uint32
	for _, p := range out[:len(evs)] {
		if p != nil {
			touch += p.last
		}
	}
	ps.rng += uint64(touch & 1)
}

// observe folds ev (at t, Unix ns) into its subject's profile p (nil: not
// found by lookup) and returns the profile, or nil when the event teaches
// nothing and has no profile.
func (ps *profiles) observe(ev *event.Event, t int64, h uint64, p *profile) *profile {
	ts := uint32(t / 1e9)
	if ps.start == 0 {
		ps.start, ps.lastSweep = ts, ts
	}
	if ts > ps.lastSweep && ts-ps.lastSweep > 3600 {
		ps.sweep(ts)
		p = nil // may have moved or gone: look up again
		if j, ok := ps.index.get(h); ok {
			p = ps.at(j)
		}
	}
	if p != nil && p.hash != h {
		p = nil // the slot was reused meanwhile
		if j, ok := ps.index.get(h); ok {
			p = ps.at(j)
		}
	}
	if p == nil {
		// Another event of the sub-batch may have created it since lookup.
		if j, ok := ps.index.get(h); ok {
			p = ps.at(j)
		}
	}
	switch {
	case keyed(ev) || ev.KeyID == "":
		if p == nil {
			p = ps.alloc(h, ts, ev.KeyID == "")
		}
	default:
		// A key id that did not authenticate (revoked, expired, ...): its
		// profile is read, not taught.
		return p
	}
	if !p.isNet() && p.winN > 0 && ts > p.last {
		// The key's volume so far in its 10-minute window, at each quarter
		// of it and when it closes, for the crowd.
		w0 := p.win * profWindow
		if ts/profWindow != p.win {
			if ts/profWindow == p.win+1 {
				ps.crowdAdd(p, ts, profWindow)
			}
		} else {
			for q := uint32(crowdPeriod); q < profWindow; q += crowdPeriod {
				if p.last < w0+q && w0+q <= ts {
					ps.crowdAdd(p, ts, ts-w0) // the events before ts
					break
				}
			}
		}
	}
	p.observe(ts, ev.ClientIP, ev.ASN, ev.Country, ps.seed, ps.grace)
	return p
}

// The crowd: how every key moves at once. At each quarter of a key's
// 10-minute window and when it closes, its volume so far against its usual
// for that hour is counted in a histogram of ratios (log scale) of the
// current crowd period (2.5 minutes); crowd_ratio is the median of the
// current period (with the last while the current holds too few keys). A
// holiday sale lifts most keys together; one key's spike (or attack) does
// not move the median.
const (
	nCrowd        = 24  // buckets of half a power of two: ratios 1/16 to 2^7.5
	crowdZero     = 8   // the bucket of ratio 1
	crowdPeriod   = 150 // seconds
	crowdMinKeys  = 10
	crowdMinUsual = 60.0 // events an hour: quieter keys are too noisy to count
)

// crowdAdd counts key p's ratio: its winN events in the first elapsed
// seconds of its window against its usual for the hour.
func (ps *profiles) crowdAdd(p *profile, now, elapsed uint32) {
	if since(now, p.created) < ps.seasonal {
		return // not a full day of history
	}
	// Against the same hour of previous days (and weeks) only, not the
	// neighbouring hours hourBaseline also takes: those learn a surge day
	// hour by hour, and the crowd would soon look quiet again.
	h := p.win * profWindow / 3600
	usual := max(decTab[p.how[h%168]], decTab[p.hod[h%24]])
	if usual < crowdMinUsual {
		return
	}
	period := now / crowdPeriod
	if period != ps.crowdPeriod {
		if period == ps.crowdPeriod+1 {
			ps.crowd[0] = ps.crowd[1]
		} else {
			ps.crowd[0] = [nCrowd]uint32{}
		}
		ps.crowd[1] = [nCrowd]uint32{}
		ps.crowdPeriod = period
	}
	b := crowdZero + int(math.Round(2*math.Log2(float64(p.winN)*3600/float64(elapsed)/usual)))
	ps.crowd[1][min(max(b, 0), nCrowd-1)]++
}

// crowdRatio is the median ratio of keys' volume to their usual for the
// hour, over the current crowd period (and the last while the current
// holds fewer than 10 keys); 1 when fewer than 10 keys were counted, and
// never below 1.
func (ps *profiles) crowdRatio(now uint32) float64 {
	var h [nCrowd]uint32
	total := func() (n uint32) {
		for _, c := range h {
			n += c
		}
		return
	}
	switch period := now / crowdPeriod; {
	case period == ps.crowdPeriod:
		if h = ps.crowd[1]; total() < crowdMinKeys {
			for i := range h {
				h[i] += ps.crowd[0][i]
			}
		}
	case period == ps.crowdPeriod+1:
		h = ps.crowd[1]
	default:
		return 1
	}
	n := total()
	if n < crowdMinKeys {
		return 1
	}
	acc := uint32(0)
	for i, c := range h {
		if acc += c; 2*acc >= n {
			return max(1, math.Exp2(float64(i-crowdZero)/2))
		}
	}
	return 1
}

// sweep drops profiles idle for longer than the quantiles remember.
func (ps *profiles) sweep(now uint32) {
	ps.lastSweep = now
	const idle = 14 * 86400
	for i := 0; i < ps.n; i++ {
		if p := ps.at(int32(i)); p.hash != 0 && now-p.last > idle && now > p.last {
			ps.release(int32(i))
		}
	}
}

// profView is what `profile` reads: the event's subject as of now.
type profView struct {
	p   *profile
	ps  *profiles
	now uint32
}

func (v profView) mature() bool {
	return v.p != nil && since(v.now, v.p.created) >= v.ps.maturity && uint32(v.p.windows) >= v.ps.minWindows
}

func (v profView) seasonal() bool {
	return v.p != nil && since(v.now, v.p.created) >= v.ps.seasonal
}

// isNew: first seen in the last 15 minutes although the engine had an
// hour of history before: a newcomer, not merely the start of the replay.
func (v profView) isNew() bool {
	return v.p != nil && v.p.flags&flagNew != 0 && since(v.now, v.p.created) < 900
}

func (v profView) ageHours() float64 {
	if v.p == nil {
		return 0
	}
	return float64(since(v.now, v.p.created)) / 3600
}

func (v profView) quantile(h int, q float64) float64 {
	if v.p == nil {
		return 0
	}
	return v.p.quantile(h, q)
}

func (v profView) hourBaseline() float64 {
	if v.p == nil {
		return 0
	}
	return v.p.hourBaseline(v.now)
}

func (v profView) peakHour() float64 {
	if v.p == nil {
		return 0
	}
	return v.p.peakHour()
}

// peakLag is how many closed windows a rise of peakWin (by more than a
// quarter) waits before rules see it.
const peakLag = 2

// peak10m is the busiest 10 minutes as rules see it: before its latest
// run of rises while that run is recent.
func (v profView) peak10m() float64 {
	if v.p == nil {
		return 0
	}
	if v.p.peakAge < peakLag && v.p.windows > peakLag {
		return decTab[v.p.peakPrev]
	}
	return float64(v.p.peakWin)
}

func (v profView) meanHour() float64 {
	if v.p == nil {
		return 0
	}
	return float64(v.p.events) / max(v.ageHours(), 1)
}

// usualMinutesAgo is how long ago the subject was last used from a country
// and ASN both established (seen for over an hour): small while a new
// place is in use means both places are in use at once.
func (v profView) usualMinutesAgo() float64 {
	if v.p == nil || v.p.lastUsual == 0 {
		return 1e9
	}
	return float64(since(v.now, v.p.lastUsual)) / 60
}

func (v profView) events() int64 {
	if v.p == nil {
		return 0
	}
	return int64(v.p.events)
}

func (v profView) seenCountry(c string, days float64) bool {
	if v.p == nil {
		return false
	}
	if len(c) < 2 {
		return true // unknown country: never novel
	}
	cty := uint16(c[0])<<8 | uint16(c[1])
	if cty == v.p.lastCty && v.p.ctyFirst <= v.now && v.now-v.p.ctyFirst >= v.ps.grace {
		return true // the usual case, answered from the profile's first line
	}
	if v.p.quantile(hCountries, 0.99) >= nSeen {
		return true // more countries at once than the set holds: cannot tell
	}
	return v.p.countries.seen(uint32(cty), v.now, days, v.ps.grace, nil)
}

func (v profView) seenASN(asn int64, days float64) bool {
	if v.p == nil {
		return false
	}
	if asn == 0 {
		return true
	}
	if uint32(asn) == v.p.lastASN && v.p.asnFirst <= v.now && v.now-v.p.asnFirst >= v.ps.grace {
		return true
	}
	// A key using more ASNs at once than the set holds is judged through
	// the set's filter of pushed-out ASNs (seen when it is too full).
	return v.p.asns.seen(uint32(asn), v.now, days, v.ps.grace, &v.p.asnGone)
}

func (v profView) seenNet(ip string, days float64) bool {
	if v.p == nil {
		return false
	}
	if i := len(ip) - 3; i > 0 && (ip[i:] == "/24" || ip[i:] == "/48") {
		// net24(ip) text: 203.0.113.0/24 or 2001:db8:1::/48
		ip = ip[:i]
		if len(ip) > 2 && ip[len(ip)-2:] == "::" {
			ip = ip[:len(ip)-2]
		} else if len(ip) > 2 && ip[len(ip)-2:] == ".0" {
			ip = ip[:len(ip)-2]
		}
	} else {
		ip = netPart(ip)
	}
	if v.p.quantile(hIPs, 0.99) >= nSeen {
		return true
	}
	return v.p.nets.seen(uint32(maphash.String(v.ps.seed, ip))|1, v.now, days, v.ps.grace, nil)
}

// profileFields are the scalar fields of `profile`, by name.
var profileFields = map[string]valKind{
	"mature": kBool, "seasonal": kBool, "new": kBool, "known": kBool,
	"age_hours": kDbl, "events": kInt,
	"countries_p50": kDbl, "countries_p99": kDbl,
	"asns_p50": kDbl, "asns_p99": kDbl,
	"ips_p50": kDbl, "ips_p99": kDbl,
	"hour_baseline": kDbl, "peak_hour": kDbl, "mean_hour": kDbl,
	"usual_minutes_ago": kDbl, "peak_10m": kDbl, "crowd_ratio": kDbl,
}

// profileMethods are the functions of `profile`: argument kinds.
var profileMethods = map[string][2]valKind{
	"seen_country": {kStr, kInt},
	"seen_asn":     {kInt, kInt},
	"seen_net":     {kStr, kInt},
}

func (v profView) field(name string) (b bool, i int64, d float64) {
	switch name {
	case "mature":
		b = v.mature()
	case "seasonal":
		b = v.seasonal()
	case "new":
		b = v.isNew()
	case "known":
		b = v.p != nil
	case "age_hours":
		d = v.ageHours()
	case "events":
		i = v.events()
	case "countries_p50":
		d = v.quantile(hCountries, 0.5)
	case "countries_p99":
		d = v.quantile(hCountries, 0.99)
	case "asns_p50":
		d = v.quantile(hASNs, 0.5)
	case "asns_p99":
		d = v.quantile(hASNs, 0.99)
	case "ips_p50":
		d = v.quantile(hIPs, 0.5)
	case "ips_p99":
		d = v.quantile(hIPs, 0.99)
	case "hour_baseline":
		d = v.hourBaseline()
	case "peak_hour":
		d = v.peakHour()
	case "mean_hour":
		d = v.meanHour()
	case "usual_minutes_ago":
		d = v.usualMinutesAgo()
	case "crowd_ratio":
		d = 1
		if v.ps != nil {
			d = v.ps.crowdRatio(v.now)
		}
	case "peak_10m":
		d = v.peak10m()
	}
	return
}

// figures are the profile's side of a decision's evidence.
func (v profView) figures(m map[string]float64) {
	if v.p == nil {
		m["profile_known"] = 0
		return
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	m["profile_mature"] = b2f(v.mature())
	m["profile_age_hours"] = math.Round(v.ageHours()*10) / 10
	m["profile_countries_p99"] = v.quantile(hCountries, 0.99)
	m["profile_asns_p99"] = v.quantile(hASNs, 0.99)
	m["profile_ips_p99"] = v.quantile(hIPs, 0.99)
	m["profile_hour_baseline"] = math.Round(v.hourBaseline())
	m["profile_peak_hour"] = math.Round(v.peakHour())
	m["profile_peak_10m"] = math.Round(v.peak10m())
	if v.ps != nil {
		m["profile_crowd_ratio"] = math.Round(v.ps.crowdRatio(v.now)*10) / 10
	}
}

// ProfileStats are the profile tables' sizes.
type ProfileStats struct {
	Keys, Networks int
	Evictions      uint64
}

// profVal is `profile` in the CEL interpreter (expressions the engine does
// not plan natively): a map-like value whose fields are read on demand.
type profVal struct{ v profView }

var profType = types.NewOpaqueType("keymeter.profile")

func (p *profVal) ConvertToNative(reflect.Type) (any, error) {
	return nil, errors.New("profile cannot be converted")
}
func (p *profVal) ConvertToType(ref.Type) ref.Val { return types.NewErr("profile cannot be converted") }
func (p *profVal) Equal(ref.Val) ref.Val          { return types.False }
func (p *profVal) Type() ref.Type                 { return profType }
func (p *profVal) Value() any                     { return p.v }

// Get implements traits.Indexer: profile.<field>.
func (p *profVal) Get(idx ref.Val) ref.Val {
	name, ok := idx.(types.String)
	if !ok {
		return types.NewErr("profile: field name must be a string")
	}
	k, ok := profileFields[string(name)]
	if !ok {
		return types.NewErr("profile has no field %q", string(name))
	}
	b, i, d := p.v.field(string(name))
	switch k {
	case kBool:
		return types.Bool(b)
	case kInt:
		return types.Int(i)
	}
	return types.Double(d)
}

func profMethod(name string) cel.EnvOption {
	sig := profileMethods[name]
	return cel.Function(name, cel.MemberOverload("profile_"+name, []*cel.Type{cel.DynType, celType(sig[0]), cel.IntType}, cel.BoolType,
		cel.FunctionBinding(func(args ...ref.Val) ref.Val {
			p, ok := args[0].(*profVal)
			days, ok2 := args[2].(types.Int)
			if !ok || !ok2 {
				return types.NewErr("%s: bad arguments", name)
			}
			switch name {
			case "seen_country":
				s, _ := args[1].(types.String)
				return types.Bool(p.v.seenCountry(string(s), float64(days)))
			case "seen_asn":
				a, _ := args[1].(types.Int)
				return types.Bool(p.v.seenASN(int64(a), float64(days)))
			default:
				s, _ := args[1].(types.String)
				return types.Bool(p.v.seenNet(string(s), float64(days)))
			}
		})))
}

// profileCELType is how rules see `profile`: a map from field names to
// values (dyn), plus the seen_* member functions.
var profileCELType = cel.MapType(cel.StringType, cel.DynType)

// since is now-t in seconds, 0 when t is not before now (a batch of events
// may teach a profile a little ahead of the event being judged).
func since(now, t uint32) uint32 {
	if t >= now {
		return 0
	}
	return now - t
}

// concurrentMinutes is how long, after country c was first seen in its
// current streak, the subject was still used from an established country
// and ASN: two places at once. 0 when it was not (a person who moved).
func (v profView) concurrentMinutes(c string) float64 {
	if v.p == nil || len(c) < 2 || v.p.lastUsual == 0 {
		return 0
	}
	cty := uint32(c[0])<<8 | uint32(c[1])
	s := &v.p.countries
	for i := 0; i < int(s.n); i++ {
		if s.e[i].v == cty {
			if v.p.lastUsual > s.e[i].first {
				return float64(v.p.lastUsual-s.e[i].first) / 60
			}
			return 0
		}
	}
	return 0
}

// runMinutes is how long country c has been in continuous use (no pause
// over 15 minutes) when it is the latest country new for the subject
// (first seen within the novelty grace); else 0. A steady second copy of a key runs on for hours; a
// visitor's sessions pause.
func (v profView) runMinutes(c string, now uint32) float64 {
	if v.p == nil || len(c) < 2 || v.p.runFirst == 0 || v.p.runCty != uint16(c[0])<<8|uint16(c[1]) {
		return 0
	}
	s := &v.p.countries
	for i := 0; i < int(s.n); i++ {
		if e := &s.e[i]; e.v == uint32(v.p.runCty) {
			if since(now, e.last) > runGap || since(now, e.first) >= v.ps.grace {
				return 0 // the run has ended, or the country is no longer new
			}
			return float64(since(now, v.p.runFirst)) / 60
		}
	}
	return 0
}

// profCountryMethods are concurrent_minutes(country) and
// run_minutes(country).
func profCountryMethods() []cel.EnvOption {
	var out []cel.EnvOption
	for _, name := range []string{"concurrent_minutes", "run_minutes"} {
		out = append(out, cel.Function(name, cel.MemberOverload("profile_"+name, []*cel.Type{cel.DynType, cel.StringType}, cel.DoubleType,
			cel.BinaryBinding(func(pv, c ref.Val) ref.Val {
				p, ok := pv.(*profVal)
				s, ok2 := c.(types.String)
				if !ok || !ok2 {
					return types.NewErr("%s: bad arguments", name)
				}
				if name == "run_minutes" {
					return types.Double(p.v.runMinutes(string(s), p.v.now))
				}
				return types.Double(p.v.concurrentMinutes(string(s)))
			}))))
	}
	return out
}
