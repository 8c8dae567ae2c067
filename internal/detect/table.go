package detect

import (
	"hash/maphash"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// table holds the window state of the rules that group events the same
// way (the same group_by): one index lookup per event serves all of them,
// and a group key's states for those rules sit side by side in memory.
// Looking groups up is what costs most at a million events a second.
type table struct {
	sig     string
	groupBy []*expr
	members []*ruleState
	index   *index
	rows    []rowHead
	// chunks hold the groups, row-major, chunkRows rows per chunk: growing
	// never copies (or briefly doubles) gigabytes of window state.
	chunks    [][]group
	sampleCh  [][]sampleRing // evidence, chunked like the groups
	exts      extPool
	maxRows   int
	retention int64
	sweep     int
	gen       uint64 // bumped when a row is removed (rows move)
	rng       uint64 // per table, so evictions do not depend on other tables
}

const (
	chunkShift = 10
	chunkRows  = 1 << chunkShift
)

// sampleRing holds the first event id of a group's last sub-windows.
type sampleRing = [nSamples]string

// samples returns the evidence rings of row ri, one per member rule.
func (tb *table) samples(ri int) []sampleRing {
	n := len(tb.members)
	c := tb.sampleCh[ri>>chunkShift]
	o := (ri & (chunkRows - 1)) * n
	return c[o : o+n : o+n]
}

// row returns the groups of row ri, one per member rule.
func (tb *table) row(ri int) []group {
	n := len(tb.members)
	c := tb.chunks[ri>>chunkShift]
	o := (ri & (chunkRows - 1)) * n
	return c[o : o+n : o+n]
}

type rowHead struct {
	key  string
	hash uint64
}

// tableSig says which rules can share a table: the same group_by and the
// same cap on groups (a cap is per rule; sharing must not tighten it).
func tableSig(r *compiledRule) string {
	return strings.Join(r.Aggregate.GroupBy, "\x00") + "\x00" + strconv.Itoa(r.maxGroups)
}

func (e *Engine) apply(set *RuleSet) {
	old := map[string]*ruleState{}
	for _, s := range e.states {
		old[s.r.ID] = s
	}
	oldTables := e.tables
	states := make([]*ruleState, 0, len(set.rules))
	var tables []*table
	bySig := map[string]*table{}
	carry := map[*ruleState]*ruleState{} // old state → new state whose windows it keeps
	maxD, maxS := 0, 0
	for _, r := range set.rules {
		maxD, maxS = max(maxD, len(r.distinct)), max(maxS, len(r.sums))
		s := &ruleState{r: r}
		s.c.Firings = map[string]uint64{}
		s.c.Actions = map[string]uint64{}
		if prev, ok := old[r.ID]; ok {
			// The groups gauge still shows the old count: publish the delta.
			s.pub.groups = prev.pub.groups
		}
		if prev, ok := old[r.ID]; ok && prev.r.Version == r.Version {
			s.tripped, s.bk = prev.tripped, prev.bk
			s.c, s.evalErrs, s.pub = prev.c, prev.evalErrs, prev.pub
			if prev.r.fingerprint == r.fingerprint {
				carry[prev] = s
				s.supp = prev.supp // per action: only while the actions are the same
			}
		}
		states = append(states, s)
		if r.mode == keymeterv1.Mode_MODE_DISABLED {
			continue
		}
		sig := tableSig(r)
		tb := bySig[sig]
		if tb == nil || len(tb.members) == 64 { // members are a 64-bit mask
			tb = &table{sig: sig, groupBy: r.groupBy, index: newIndex(), maxRows: r.maxGroups, rng: 0x9e3779b97f4a7c15}
			bySig[sig] = tb
			tables = append(tables, tb)
		}
		s.tab, s.slot = tb, len(tb.members)
		tb.members = append(tb.members, s)
		tb.maxRows = min(tb.maxRows, r.maxGroups)
		tb.retention = max(tb.retention, r.retention)
	}
	carryWindows(oldTables, carry)
	e.set, e.states, e.tables = set, states, tables
	e.needProf = false
	for _, s := range states {
		e.needProf = e.needProf || (s.tab != nil && s.r.usesProfile)
	}
	e.current.Store(set)
	e.hv, e.sv = make([]uint64, maxD), make([]int64, maxS)
	if e.cfg.Metrics != nil {
		e.cfg.Metrics.setRules(set)
	}
}

// carryWindows moves the windows of unchanged rules (carry: old state →
// new state) from the old tables into the new ones.
func carryWindows(oldTables []*table, carry map[*ruleState]*ruleState) {
	for _, ot := range oldTables {
		for ri, row := range ot.rows {
			for slot, os := range ot.members {
				ns := carry[os]
				if ns == nil || ns.tab == nil {
					continue
				}
				g := ot.row(ri)[slot]
				if !g.used {
					continue
				}
				nt := ns.tab
				nri, ok := nt.index.get(row.hash)
				if !ok {
					nri = nt.addRow(row)
				}
				if g.ext != 0 {
					g.ext = nt.exts.put(ot.exts.get(g.ext))
				}
				nt.row(int(nri))[ns.slot] = g
				nt.samples(int(nri))[ns.slot] = ot.samples(ri)[slot]
				ns.used++
			}
		}
	}
}

func (tb *table) addRow(row rowHead) int32 {
	ri := int32(len(tb.rows))
	tb.rows = append(tb.rows, row)
	if int(ri)>>chunkShift == len(tb.chunks) {
		tb.chunks = append(tb.chunks, make([]group, chunkRows*len(tb.members)))
		tb.sampleCh = append(tb.sampleCh, make([]sampleRing, chunkRows*len(tb.members)))
	}
	tb.index.set(row.hash, ri)
	return ri
}

// Process runs every rule over one event. Events should arrive roughly in
// event-time order; an event older than a group's window is not counted.
func (e *Engine) Process(ev *event.Event) { e.ProcessBatch(unsafe.Slice(ev, 1)) }

// subBatch is how many events go through each phase together: enough
// independent index and group lookups for the processor to overlap their
// cache misses, few enough that the scratch arrays stay in L1.
const subBatch = 256

// scratch holds per-event values between the phases of a sub-batch.
type scratch struct {
	prof  []*profile
	ph    []uint64
	t, wm []int64
	match []uint64 // members of the current table that matched
	hash  []uint64
	row   []int32
}

// ProcessBatch runs every rule over the events, in order. Tables are
// processed one after another over a sub-batch in three phases (match and
// hash, index lookups, window updates), so that the lookups of different
// events, which do not depend on each other, overlap in memory. The result
// is the same as processing the events one by one, except for the order in
// which decisions of different tables reach the sink within a sub-batch.
func (e *Engine) ProcessBatch(evs []event.Event) {
	if e.pending.Load() != nil {
		if set := e.pending.Swap(nil); set != nil {
			e.apply(set)
		}
	}
	if e.resets.Load() != nil {
		e.applyResets()
	}
	if e.extSig.Load() != nil {
		e.applyExtSignals()
	}
	for len(evs) > 0 {
		n := min(len(evs), subBatch)
		e.processSub(evs[:n])
		evs = evs[n:]
	}
	e.act.ev, e.act.agg = nil, nil // do not keep the caller's batch alive
	if e.processed-e.pubAt >= 0x10000 || (e.processed-e.pubAt >= 0x400 && time.Since(e.published) > time.Second) {
		e.publishStats()
	}
}

func (e *Engine) processSub(evs []event.Event) {
	sc := &e.sc
	if cap(sc.t) < len(evs) {
		sc.t, sc.wm = make([]int64, subBatch), make([]int64, subBatch)
		sc.match, sc.hash, sc.row = make([]uint64, subBatch), make([]uint64, subBatch), make([]int32, subBatch)
		sc.prof, sc.ph = make([]*profile, subBatch), make([]uint64, subBatch)
	}
	for i := range evs {
		t := evs[i].Time.UnixNano()
		if t <= 0 {
			// No usable time (zero, or before 1970): windows are in event time.
			e.badTime++
		} else if t > e.watermark {
			e.watermark = t
		}
		sc.t[i], sc.wm[i] = t, e.watermark
		if t > 0 && e.warmupEnd == 0 {
			e.warmupEnd = t + int64(e.cfg.Warmup)
			e.lastSweep = t
		}
	}
	if e.prof != nil && e.needProf {
		e.prof.lookup(evs, sc.t, sc.ph, sc.prof)
		for i := range evs {
			if sc.t[i] > 0 {
				sc.prof[i] = e.prof.observe(&evs[i], sc.t[i], sc.ph[i], sc.prof[i])
			}
		}
	} else {
		clear(sc.prof[:len(evs)])
	}
	if e.watermark-e.lastSweep > int64(time.Hour) {
		e.sweepState(e.watermark)
	}
	e.processed += uint64(len(evs))
	for _, tb := range e.tables {
		if e.matchTable(tb, evs) {
			e.updateTable(tb, evs)
		}
	}
}

// matchTable is phase 1 for one table: which of its members match each
// event (sc.match), and the group key's hash (sc.hash). It reports whether
// any did.
func (e *Engine) matchTable(tb *table, evs []event.Event) bool {
	sc := &e.sc
	// Phase 1: which members match, and the group key's hash.
	any := false
	for i := range evs {
		sc.match[i] = 0
		if sc.t[i] <= 0 {
			continue
		}
		e.act.ev = &evs[i]
		e.act.prof = profView{p: sc.prof[i], ps: e.prof, now: uint32(sc.t[i] / 1e9)}
		var m uint64
		var first *ruleState
		for k, s := range tb.members {
			s.c.Evaluations++
			if s.r.match.evalBool(&e.act, &s.evalErrs) {
				s.c.Matches++
				m |= 1 << k
				if first == nil {
					first = s
				}
			}
		}
		if m != 0 {
			sc.match[i] = m
			sc.hash[i] = e.keyHash(tb, first)
			any = true
		}
	}
	return any
}

// updateTable is phases 2 and 3 for one table: the group rows of the
// matching events, then the window updates and actions in event order.
func (e *Engine) updateTable(tb *table, evs []event.Event) {
	sc := &e.sc
	// Phase 2: index lookups, independent of each other; then a read of
	// each group's first line, so that phase 3 finds them in cache.
	for i := range evs {
		if sc.match[i] != 0 {
			sc.row[i] = -1
			if ri, ok := tb.index.get(sc.hash[i]); ok {
				sc.row[i] = ri
			}
		}
	}
	var touch int64
	for i := range evs {
		if sc.match[i] != 0 && sc.row[i] >= 0 {
			for _, g := range tb.row(int(sc.row[i])) {
				touch += g.head
			}
		}
	}
	e.touch += touch
	// Phase 3: window updates and actions, in event order. A row
	// removed meanwhile (eviction, sweep) may have moved another: then
	// look up again.
	gen := tb.gen
	for i := range evs {
		m := sc.match[i]
		if m == 0 {
			continue
		}
		ev, t := &evs[i], sc.t[i]
		e.act.ev = ev
		e.act.prof = profView{p: sc.prof[i], ps: e.prof, now: uint32(t / 1e9)}
		ri := sc.row[i]
		if ri < 0 || tb.gen != gen {
			ri = e.lookupRow(tb, t, sc.hash[i])
		}
		for k, s := range tb.members {
			if m&(1<<k) != 0 {
				e.observe(s, tb, ri, ev, t)
			}
		}
		e.sweepOne(tb, sc.wm[i])
	}
}

// keyHash evaluates the table's group_by into e.keyBuf and hashes it.
func (e *Engine) keyHash(tb *table, s *ruleState) uint64 {
	buf := e.keyBuf[:0]
	for i, g := range tb.groupBy {
		if i > 0 {
			buf = append(buf, '|')
		}
		buf = g.evalKey(&e.act, buf, &s.evalErrs)
	}
	e.keyBuf = buf
	return maphash.Bytes(e.seed, buf)
}

// lookupRow finds or creates the row of the current event's group.
func (e *Engine) lookupRow(tb *table, t int64, h uint64) int32 {
	if ri, ok := tb.index.get(h); ok {
		return ri
	}
	if len(tb.rows) >= tb.maxRows {
		e.evict(tb)
	}
	// e.keyBuf may hold another event's key by now: rebuild it (same
	// event, same seed: same hash).
	h = e.keyHash(tb, tb.members[0])
	return tb.addRow(rowHead{key: string(e.keyBuf), hash: h})
}

func (e *Engine) observe(s *ruleState, tb *table, ri int32, ev *event.Event, t int64) {
	r := s.r
	g := &tb.row(int(ri))[s.slot]
	if !g.used {
		e.initGroup(s, g, tb.rows[ri].key, t)
	}
	if len(r.distinct)+len(r.sums) > 0 {
		for d, f := range r.distinct {
			if f.Kind == kStr {
				e.hv[d] = maphash.String(e.seed, f.Str(ev))
			} else {
				e.hv[d] = uint64(f.Int(ev))*0x9e3779b97f4a7c15 + 1
			}
		}
		for d, f := range r.sums {
			e.sv[d] = f.Int(ev)
		}
	}
	ok, first := g.add(r, &tb.exts, t, e.hv, e.sv)
	if !ok {
		s.c.Late++
		return
	}
	if first {
		// Kept as evidence, cloned: events from a bus batch share the
		// batch's reused buffer.
		tb.samples(int(ri))[s.slot][g.sampleN%nSamples] = strings.Clone(ev.ID)
		g.sampleN++
	}
	if t < e.warmupEnd || e.quiet {
		return // learning only
	}
	// Every action suppressed: nothing can fire.
	if t < g.suppressUntil && g.firedMask == (1<<len(r.actions))-1 {
		return
	}
	if g.firedMask != 0 && t >= g.suppressUntil {
		s.refreshSupp(g, tb.rows[ri].key, t)
	}
	e.view = aggView{r: r, g: g, p: &tb.exts, now: t, tb: tb, ri: ri, slot: s.slot}
	e.act.agg = &e.view
	for i := range r.actions {
		a := &r.actions[i]
		if g.firedMask&(1<<i) != 0 {
			continue
		}
		if !a.when.evalBool(&e.act, &s.evalErrs) {
			continue
		}
		e.fire(s, g, i, ev, t)
	}
	e.act.agg = nil
}

func (e *Engine) initGroup(s *ruleState, g *group, key string, t int64) {
	r := s.r
	*g = group{used: true, head: t / r.bucketW, last: t, periodStart: t}
	if s.supp[key] != nil {
		// The group was dropped while an action was still suppressed.
		g.firedMask = 1
		s.refreshSupp(g, key, t)
	}
	if len(r.distinct) > 2 || len(r.sums) > 0 {
		g.ext = s.tab.exts.put(newGroupExt(r))
	}
	if r.baseline != nil {
		g.baseline = r.baseline.Default
		if e.cfg.Baselines != nil {
			if b, ok := e.cfg.Baselines.Baseline(r.ID, key); ok {
				g.baseline = b
			}
		}
	}
	s.used++
}

// rowIdle reports the newest event time of a row and whether any of its
// groups is still suppressing.
func (tb *table) rowState(ri int) (last int64, suppressUntil int64) {
	for _, g := range tb.row(ri) {
		if g.used {
			last = max(last, g.last)
			suppressUntil = max(suppressUntil, g.suppressUntil)
		}
	}
	return
}

// evict drops the stalest of a few random rows (approximate LRU, as Redis
// does it): no per-event bookkeeping is needed.
func (e *Engine) evict(tb *table) {
	n := len(tb.rows)
	victim, vlast := -1, int64(0)
	for k := 0; k < 5; k++ {
		tb.rng ^= tb.rng << 13
		tb.rng ^= tb.rng >> 7
		tb.rng ^= tb.rng << 17
		i := int(tb.rng % uint64(n))
		if last, _ := tb.rowState(i); victim < 0 || last < vlast {
			victim, vlast = i, last
		}
	}
	e.removeRow(tb, victim, true)
}

// sweepOne looks at one row per event and drops it when idle for longer
// than the rules' retention (as of now, the watermark at that event), so
// memory follows the active groups.
func (e *Engine) sweepOne(tb *table, now int64) {
	n := len(tb.rows)
	if n == 0 {
		return
	}
	if tb.sweep >= n {
		tb.sweep = 0
	}
	last, sup := tb.rowState(tb.sweep)
	if last < now-tb.retention && sup < now {
		e.removeRow(tb, tb.sweep, false)
		return
	}
	tb.sweep++
}

func (e *Engine) removeRow(tb *table, i int, evicted bool) {
	tb.gen++
	for slot, s := range tb.members {
		g := &tb.row(i)[slot]
		if !g.used {
			continue
		}
		if g.ext != 0 {
			tb.exts.release(g.ext)
		}
		s.used--
		if evicted {
			s.c.Evictions++
			if e.cfg.Metrics != nil {
				e.cfg.Metrics.Evictions.WithLabelValues(s.r.ID).Inc()
			}
		} else {
			s.c.Expired++
		}
	}
	last := len(tb.rows) - 1
	tb.index.del(tb.rows[i].hash)
	if i != last {
		tb.rows[i] = tb.rows[last]
		copy(tb.row(i), tb.row(last))
		copy(tb.samples(i), tb.samples(last))
		tb.index.set(tb.rows[i].hash, int32(i))
	}
	tb.rows[last] = rowHead{}
	clear(tb.row(last))
	clear(tb.samples(last))
	tb.rows = tb.rows[:last]
	if last&(chunkRows-1) == 0 && len(tb.chunks) > 1 {
		// The last chunk emptied: give it back.
		tb.chunks[len(tb.chunks)-1], tb.sampleCh[len(tb.sampleCh)-1] = nil, nil
		tb.chunks, tb.sampleCh = tb.chunks[:len(tb.chunks)-1], tb.sampleCh[:len(tb.sampleCh)-1]
	}
}
