package detect

import (
	"math"
	"strings"
)

const nSamples = 2

// group is one group's sliding-window state: 128 bytes, two cache lines,
// held by value in its table's chunks. Evidence samples live beside it
// (table.samples), touched once per sub-window rather than per event.
type group struct {
	used          bool
	dn            [2]uint8 // values of distinct fields 0 and 1 held inline, or spilled
	wide          bool     // a bucket outgrew uint16: counts live in ext.wide
	firedMask     uint32   // actions fired during the current suppression
	periodCount   uint32
	sampleN       uint32
	head          int64 // bucket number of the newest bucket
	last          int64 // newest event time, ns
	suppressUntil int64
	periodStart   int64
	baseline      float64
	ext           int32 // handle in the table's extPool (0: none): sums, wide counts, big distinct sets

	counts [nBuckets]uint16
	dist   [4]distinctEntry
}

// spilled marks a distinct field whose values moved to ext.
const spilled = 0xff

type groupExt struct {
	sums     []int64           // nBuckets per sum field
	distinct [][]distinctEntry // per distinct field
	wide     [nBuckets]uint32
}

// extPool holds the groups' extensions. Groups refer to them by handle,
// not pointer, so the chunks of groups hold no pointers and the garbage
// collector never scans them: at millions of groups that is most of the heap.
type extPool struct {
	items []*groupExt
	free  []int32
}

func (p *extPool) get(h int32) *groupExt { return p.items[h-1] }

func (p *extPool) put(x *groupExt) int32 {
	if n := len(p.free); n > 0 {
		h := p.free[n-1]
		p.free = p.free[:n-1]
		p.items[h-1] = x
		return h
	}
	p.items = append(p.items, x)
	return int32(len(p.items))
}

func (p *extPool) release(h int32) {
	p.items[h-1] = nil
	p.free = append(p.free, h)
}

func newGroupExt(r *compiledRule) *groupExt {
	x := &groupExt{distinct: make([][]distinctEntry, len(r.distinct))}
	if len(r.sums) > 0 {
		x.sums = make([]int64, nBuckets*len(r.sums))
	}
	return x
}

// distinctEntry is one value of a distinct field: a 32-bit hash (sets are
// capped at a few hundred values, so collisions are negligible) and when it
// was last seen, in Unix seconds: distinct counts have second resolution.
type distinctEntry struct {
	h    uint32
	last uint32
}

func secs(t int64) uint32 { return uint32(t / 1e9) }

func hash32(h uint64) uint32 { return uint32(h ^ h>>32) }

// add records one event at time t (ns) in the window. It reports false for
// an event older than the window, and whether the event is the first of
// its sub-window (to be kept as evidence).
func (g *group) add(r *compiledRule, p *extPool, t int64, hv []uint64, sv []int64) (ok, first bool) {
	var x *groupExt
	if g.ext != 0 {
		x = p.get(g.ext)
	}
	b := t / r.bucketW
	first = g.sampleN == 0
	if b > g.head {
		first = true
		n := b - g.head
		if n >= nBuckets {
			g.counts = [nBuckets]uint16{}
			if x != nil {
				clear(x.sums)
				x.wide = [nBuckets]uint32{}
			}
		} else {
			for k := g.head + 1; k <= b; k++ {
				i := k % nBuckets
				g.counts[i] = 0
				if x != nil {
					x.wide[i] = 0
					for s := range r.sums {
						x.sums[s*nBuckets+int(i)] = 0
					}
				}
			}
		}
		g.head = b
	} else if b <= g.head-nBuckets {
		return false, false
	}
	i := int(b % nBuckets)
	switch {
	case g.wide:
		if x.wide[i] < math.MaxUint32 {
			x.wide[i]++
		}
	case g.counts[i] < math.MaxUint16:
		g.counts[i]++
	default:
		if x == nil {
			x = newGroupExt(r)
			g.ext = p.put(x)
		}
		for k, c := range g.counts {
			x.wide[k] = uint32(c)
		}
		x.wide[i]++
		g.wide = true
	}
	if t > g.last {
		g.last = t
	}
	for s := range r.sums {
		x.sums[s*nBuckets+i] += sv[s]
	}
	if len(r.distinct) > 0 {
		ts := secs(t)
		exp := secs(t - r.window)
		for d := range r.distinct {
			g.addDistinct(r, p, d, hash32(hv[d]), ts, exp)
		}
	}
	if r.baseline != nil {
		g.learn(r, t)
	}
	return true, first
}

// learn folds completed windows into the baseline (an exponentially
// weighted average of events per window) and counts t into the current one.
func (g *group) learn(r *compiledRule, t int64) {
	if t >= g.periodStart+r.window {
		k := (t - g.periodStart) / r.window
		g.baseline = (1-r.alpha)*g.baseline + r.alpha*float64(g.periodCount)
		if k > 1 {
			g.baseline *= math.Pow(1-r.alpha, float64(min(k-1, 1000)))
		}
		g.periodStart += k * r.window
		g.periodCount = 0
	}
	g.periodCount++
}

// addDistinct keeps the first two values of fields 0 and 1 inside the
// group: most keys are seen from one address and one country, and the
// group's cache line is already loaded.
func (g *group) addDistinct(r *compiledRule, p *extPool, d int, h, t, expired uint32) {
	if d >= 2 || g.dn[d] == spilled {
		x := p.get(g.ext)
		x.distinct[d] = addDistinct(x.distinct[d], h, t, expired, r.distinctCap)
		return
	}
	in := g.dist[d*2 : d*2+2]
	n := int(g.dn[d])
	for i := 0; i < n; i++ {
		if in[i].h == h {
			if t > in[i].last {
				in[i].last = t
			}
			return
		}
	}
	if n == 2 {
		n = 0
		for _, e := range in {
			if e.last > expired {
				in[n] = e
				n++
			}
		}
	}
	if n < 2 {
		in[n] = distinctEntry{h: h, last: t}
		g.dn[d] = uint8(n + 1)
		return
	}
	if g.ext == 0 {
		g.ext = p.put(newGroupExt(r))
	}
	set := make([]distinctEntry, 2, 8)
	copy(set, in)
	x := p.get(g.ext)
	x.distinct[d] = addDistinct(set, h, t, expired, r.distinctCap)
	g.dn[d] = spilled
}

func addDistinct(set []distinctEntry, h, t, expired uint32, capacity int) []distinctEntry {
	for i := range set {
		if set[i].h == h {
			if t > set[i].last {
				set[i].last = t
			}
			return set
		}
	}
	if len(set) >= capacity {
		// Drop values that left the window; if none did, replace the
		// stalest: the count saturates at the cap.
		j := 0
		for _, e := range set {
			if e.last > expired {
				set[j] = e
				j++
			}
		}
		set = set[:j]
		if len(set) >= capacity {
			old := 0
			for i := range set {
				if set[i].last < set[old].last {
					old = i
				}
			}
			set[old] = distinctEntry{h: h, last: t}
			return set
		}
	}
	return append(set, distinctEntry{h: h, last: t})
}

func (g *group) count(p *extPool) int64 {
	var n int64
	if g.wide {
		for _, c := range p.get(g.ext).wide {
			n += int64(c)
		}
		return n
	}
	for _, c := range g.counts {
		n += int64(c)
	}
	return n
}

// aggView is what an action's when expression sees: one group's window as
// of the event being processed. Features are computed when asked for.
type aggView struct {
	r    *compiledRule
	g    *group
	p    *extPool
	now  int64
	tb   *table // the group's key and hash are in tb.rows[ri]
	ri   int32
	slot int
	key  string // when tb is nil (tests)
}

func (v *aggView) count() int64 { return v.g.count(v.p) }

func (v *aggView) baseline() float64 { return v.g.baseline }

func (v *aggView) windowSeconds() int64 { return v.r.window / 1e9 }

func (v *aggView) rate() float64 { return float64(v.g.count(v.p)) / (float64(v.r.window) / 1e9) }

func (v *aggView) groupKey() string {
	if v.tb == nil {
		return v.key
	}
	return v.tb.rows[v.ri].key
}

func (v *aggView) hash() uint64 {
	if v.tb == nil {
		return 0
	}
	return v.tb.rows[v.ri].hash
}

func (v *aggView) distinct(i int) int64 {
	expired := secs(v.now - v.r.window)
	set := v.g.dist[:0]
	switch {
	case i < 2 && v.g.dn[i] != spilled:
		set = v.g.dist[i*2 : i*2+int(v.g.dn[i])]
	case v.g.ext != 0:
		set = v.p.get(v.g.ext).distinct[i]
	}
	var n int64
	for _, e := range set {
		if e.last > expired {
			n++
		}
	}
	return n
}

func (v *aggView) sum(i int) int64 {
	if v.g.ext == 0 {
		return 0
	}
	var n int64
	for _, x := range v.p.get(v.g.ext).sums[i*nBuckets : (i+1)*nBuckets] {
		n += x
	}
	return n
}

// figures are the window's numbers, as evidence in a decision.
func (v *aggView) figures() map[string]float64 {
	m := map[string]float64{
		"count":          float64(v.count()),
		"window_seconds": float64(v.windowSeconds()),
	}
	for i, f := range v.r.distinct {
		m["distinct_"+f.Name] = float64(v.distinct(i))
	}
	for i, f := range v.r.sums {
		m["sum_"+f.Name] = float64(v.sum(i))
	}
	if v.r.baseline != nil {
		m["baseline"] = v.baseline()
	}
	return m
}

// sampleIDs is the evidence of a decision: the first events of the last
// sub-windows, oldest first, and the event that triggered it.
func (v *aggView) sampleIDs(trigger string) []string {
	var out []string
	if v.tb != nil {
		g, ring := v.g, v.tb.samples(int(v.ri))[v.slot]
		n := min(g.sampleN, nSamples)
		for k := uint32(0); k < n; k++ {
			if id := ring[(g.sampleN-n+k)%nSamples]; id != "" {
				out = append(out, id)
			}
		}
	}
	if len(out) == 0 || out[len(out)-1] != trigger {
		out = append(out, strings.Clone(trigger))
	}
	return out
}
