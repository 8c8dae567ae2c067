package detect

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// Parallel runs a rule set on several cores: the rules are split among n
// engines, each on its own goroutine, and every engine sees every event.
// Unlike partitioning the events, this keeps every rule's semantics
// whatever it groups by. A rule stays on its engine across reloads, so it
// keeps its windows.
type Parallel struct {
	engines []*Engine
	work    []chan *job
	mu      sync.Mutex
	assign  map[string]int // rule id → engine
	closed  bool
}

type lockedSink struct {
	mu   sync.Mutex
	sink Sink
}

func (l *lockedSink) Decide(d *keymeterv1.Decision) {
	l.mu.Lock()
	l.sink.Decide(d)
	l.mu.Unlock()
}

// NewParallel starts n engines (n ≥ 1). cfg.Sink is called under a lock,
// from the engines' goroutines.
func NewParallel(cfg Config, set *RuleSet, n int) (*Parallel, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n = max(n, 1)
	cfg.Sink = &lockedSink{sink: cfg.Sink}
	p := &Parallel{assign: map[string]int{}}
	if set == nil {
		set = &RuleSet{}
	}
	parts := p.split(set, n)
	sh := newShared()
	for i := 0; i < n; i++ {
		e, err := New(cfg, parts[i])
		if err != nil {
			return nil, err
		}
		e.sh = sh
		p.engines = append(p.engines, e)
		// Buffered: an engine may run a few batches ahead of a slower one
		// instead of waiting for it after every batch.
		ch := make(chan *job, 16)
		p.work = append(p.work, ch)
		go func() {
			for j := range ch {
				if j.flush {
					e.Flush()
				} else {
					e.ProcessBatch(j.evs)
				}
				if j.left.Add(-1) == 0 && j.done != nil {
					j.done()
				}
			}
		}()
	}
	return p, nil
}

// split assigns each rule to an engine. Rules already placed stay (they
// keep their windows). New rules are placed by group table: rules that
// group alike go to the same engine, where they share one index lookup per
// event; tables go, heaviest first (most rules), to the least loaded
// engine.
func (p *Parallel) split(set *RuleSet, n int) []*RuleSet {
	parts := make([]*RuleSet, n)
	load := make([]int, n)
	for i := range parts {
		parts[i] = &RuleSet{}
	}
	bySig := map[string][]*compiledRule{}
	var sigs []string
	sigEngine := map[string]int{}
	for _, r := range set.rules {
		sig := tableSig(r)
		if w, ok := p.assign[r.ID]; ok && w < n {
			parts[w].rules = append(parts[w].rules, r)
			load[w]++
			sigEngine[sig] = w
			continue
		}
		if bySig[sig] == nil {
			sigs = append(sigs, sig)
		}
		bySig[sig] = append(bySig[sig], r)
	}
	sort.SliceStable(sigs, func(i, j int) bool { return len(bySig[sigs[i]]) > len(bySig[sigs[j]]) })
	for _, sig := range sigs {
		w, ok := sigEngine[sig] // join the table already running, if any
		if !ok {
			w = 0
			for i := range load {
				if load[i] < load[w] {
					w = i
				}
			}
		}
		for _, r := range bySig[sig] {
			parts[w].rules = append(parts[w].rules, r)
			p.assign[r.ID] = w
		}
		load[w] += 1 + len(bySig[sig]) // a table costs its lookup plus its rules
	}
	return parts
}

type job struct {
	flush bool
	evs   []event.Event
	left  atomic.Int32
	done  func()
}

// Submit hands the batch to every engine and returns at once (unless the
// engines are 16 batches behind); done is called, on an engine's
// goroutine, once all have processed it and evs may be reused. Batches
// are processed in the order submitted.
func (p *Parallel) Submit(evs []event.Event, done func()) {
	j := &job{evs: evs, done: done}
	j.left.Store(int32(len(p.work)))
	for _, ch := range p.work {
		ch <- j
	}
}

// ProcessBatch hands the batch to every engine and returns when all have
// processed it; evs may then be reused.
func (p *Parallel) ProcessBatch(evs []event.Event) {
	var wg sync.WaitGroup
	wg.Add(1)
	p.Submit(evs, wg.Done)
	wg.Wait()
}

// Swap replaces the rule set on every engine.
func (p *Parallel) Swap(set *RuleSet) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, part := range p.split(set, len(p.engines)) {
		p.engines[i].Swap(part)
	}
}

// ResetBreaker re-arms a tripped rule.
func (p *Parallel) ResetBreaker(ruleID string) {
	for _, e := range p.engines {
		e.ResetBreaker(ruleID)
	}
}

// Flush publishes every engine's counters, after the batches submitted
// before it, and waits for it. Safe from any goroutine.
func (p *Parallel) Flush() {
	var wg sync.WaitGroup
	wg.Add(1)
	j := &job{flush: true, done: wg.Done}
	j.left.Store(int32(len(p.work)))
	for _, ch := range p.work {
		ch <- j
	}
	wg.Wait()
}

// Stats merges the engines' counters.
func (p *Parallel) Stats() Stats {
	var st Stats
	for i, e := range p.engines {
		s := e.Stats()
		if i == 0 {
			st.Events = s.Events
		}
		if s.Watermark.After(st.Watermark) {
			st.Watermark = s.Watermark
		}
		st.Rules = append(st.Rules, s.Rules...)
	}
	if st.Watermark.IsZero() {
		st.Watermark = time.Time{}
	}
	sort.SliceStable(st.Rules, func(i, j int) bool { return st.Rules[i].ID < st.Rules[j].ID })
	return st
}

// Close stops the engines' goroutines. No batch may be in flight.
func (p *Parallel) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	for _, ch := range p.work {
		close(ch)
	}
}

// RuleStatuses is the rules' counters for GET /v1/rules (api.RuleLister).
func (p *Parallel) RuleStatuses() any { return p.Stats().Rules }
