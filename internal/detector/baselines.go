package detector

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/store"
)

// Baselines warm-starts per-key baselines from the store's rollups: a key's
// mean requests per minute over the past Lookback, scaled to each rule's
// window. It answers from memory (the engine calls it on its hot path) and
// reloads in the background.
type Baselines struct {
	usage    store.UsageReader
	lookback time.Duration
	perMin   atomic.Pointer[map[string]float64]
	windows  atomic.Pointer[map[string]time.Duration]
}

// NewBaselines returns a source that knows nothing until Load.
func NewBaselines(u store.UsageReader, lookback time.Duration) *Baselines {
	if lookback <= 0 {
		lookback = 7 * 24 * time.Hour
	}
	b := &Baselines{usage: u, lookback: lookback}
	empty := map[string]float64{}
	b.perMin.Store(&empty)
	w := map[string]time.Duration{}
	b.windows.Store(&w)
	return b
}

// SetRules records each rule's window (call on every rule set swap).
func (b *Baselines) SetRules(set *detect.RuleSet) {
	w := map[string]time.Duration{}
	if set != nil {
		for _, r := range set.Rules() {
			w[r.ID] = time.Duration(r.Aggregate.Window)
		}
	}
	b.windows.Store(&w)
}

// Load reads every key's baseline from the store.
func (b *Baselines) Load(ctx context.Context) (int, error) {
	if b.usage == nil {
		return 0, nil
	}
	now := time.Now().UTC()
	bs, err := b.usage.Baselines(ctx, store.BaselineQuery{From: now.Add(-b.lookback), To: now})
	if err != nil {
		return 0, err
	}
	m := make(map[string]float64, len(bs))
	for _, x := range bs {
		m[x.KeyID] = x.MeanPerMinute
	}
	b.perMin.Store(&m)
	return len(m), nil
}

// Run reloads every interval until ctx ends.
func (b *Baselines) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = b.Load(ctx)
		}
	}
}

// Baseline implements detect.BaselineSource for rules grouped by key id.
func (b *Baselines) Baseline(ruleID, group string) (float64, bool) {
	pm, ok := (*b.perMin.Load())[group]
	if !ok {
		return 0, false
	}
	w := (*b.windows.Load())[ruleID]
	if w <= 0 {
		return 0, false
	}
	return pm * w.Minutes(), true
}
