package backtest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/evaluate"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// diffSide is one rule set's replay of the history.
type diffSide struct {
	name    string
	paths   []string
	rep     *detect.BacktestReport
	byKey   map[string]int       // "<group> <mode>/<action>" -> decisions
	first   map[string]time.Time // first decision of a key
	byRule  map[string]int
	enf     map[string]int // enforced decisions by action
	total   int
	scorer  *evaluate.Scorer
	bad     BadLines
	elapsed time.Duration
}

func modeName(m keymeterv1.Mode) string {
	switch m {
	case keymeterv1.Mode_MODE_ENFORCE:
		return "enforce"
	case keymeterv1.Mode_MODE_DRY_RUN:
		return "dry_run"
	case keymeterv1.Mode_MODE_DISABLED:
		return "disabled"
	}
	return "unspecified"
}

func (s *diffSide) run(set *detect.RuleSet, eventsPath string, skipInvalid bool, maxRevokes int) error {
	f, err := os.Open(eventsPath)
	if err != nil {
		return err
	}
	defer f.Close()
	var mu sync.Mutex
	sink := detect.SinkFunc(func(d *keymeterv1.Decision) {
		mu.Lock()
		defer mu.Unlock()
		k := d.Group + " " + modeName(d.Mode) + "/" + evaluate.ActionName(d.Action)
		if _, ok := s.byKey[k]; !ok {
			s.first[k] = time.Unix(0, d.TimeUnixNano).UTC()
		}
		s.byKey[k]++
		s.byRule[d.RuleId]++
		s.total++
		if d.Mode == keymeterv1.Mode_MODE_ENFORCE {
			s.enf[evaluate.ActionName(d.Action)]++
		}
		if s.scorer != nil {
			s.scorer.Decide(d)
		}
	})
	var onEvent func(*event.Event)
	if s.scorer != nil {
		onEvent = s.scorer.Event
	}
	src := NewNDJSONSource(f, skipInvalid, onEvent)
	defer src.Close()
	start := time.Now()
	s.rep, err = detect.Backtest(set, src, detect.BacktestOptions{Config: detect.Config{MaxRevocationsPerHour: maxRevokes, Sink: sink}})
	s.elapsed = time.Since(start)
	s.bad = *src.Bad()
	if err != nil {
		var fe *event.FieldError
		if errors.As(err, &fe) {
			return fmt.Errorf("%s:%d: field %s: %s (--skip-invalid goes on past bad lines)", eventsPath, fe.Line, fe.Field, fe.Reason)
		}
		return fmt.Errorf("%s: %w", eventsPath, err)
	}
	return nil
}

// DiffConfig is one `rules diff`: the same history through two rule sets.
type DiffConfig struct {
	OldPaths, NewPaths    []string // shown in the report
	Old, New              *detect.RuleSet
	EventsPath            string           // NDJSON history
	Labels                []evaluate.Label // nil: no scoring
	SkipInvalid           bool
	Limit                 int // rows of changed groups shown
	MaxRevocationsPerHour int
	Out, Log              io.Writer // report; timings
}

// Diff replays the history through both sets at once and writes which
// decisions change, per rule and per enforced action, and a summary line.
func Diff(cfg DiffConfig) error {
	TuneGC()
	sides := []*diffSide{{name: "old", paths: cfg.OldPaths}, {name: "new", paths: cfg.NewPaths}}
	sets := []*detect.RuleSet{cfg.Old, cfg.New}
	for _, s := range sides {
		s.byKey, s.first, s.byRule, s.enf = map[string]int{}, map[string]time.Time{}, map[string]int{}, map[string]int{}
		if cfg.Labels != nil {
			var err error
			if s.scorer, err = evaluate.NewScorer(cfg.Labels, 0); err != nil {
				return err
			}
		}
	}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, s := range sides {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.run(sets[i], cfg.EventsPath, cfg.SkipInvalid, cfg.MaxRevocationsPerHour)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(cfg.Log, "diff: %d events, old in %s, new in %s\n", sides[0].rep.Events, sides[0].elapsed.Round(time.Millisecond), sides[1].elapsed.Round(time.Millisecond))
	return writeDiff(cfg.Out, sides[0], sides[1], cfg.Limit)
}

// diffRow is a group, mode and action whose number of decisions changed.
type diffRow struct {
	key   string
	o, n  int
	first time.Time
}

// changedRows are the rows whose counts differ, largest change first, with
// how many exist only under the old set, only under the new, or in both.
func changedRows(old, nw *diffSide) (rows []diffRow, onlyOld, onlyNew, changed int) {
	keys := map[string]bool{}
	for k := range old.byKey {
		keys[k] = true
	}
	for k := range nw.byKey {
		keys[k] = true
	}
	for k := range keys {
		o, n := old.byKey[k], nw.byKey[k]
		if o == n {
			continue
		}
		r := diffRow{key: k, o: o, n: n}
		switch {
		case n == 0:
			onlyOld++
			r.first = old.first[k]
		case o == 0:
			onlyNew++
			r.first = nw.first[k]
		default:
			changed++
			r.first = old.first[k]
			if nw.first[k].Before(r.first) {
				r.first = nw.first[k]
			}
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool {
		di, dj := abs(rows[i].n-rows[i].o), abs(rows[j].n-rows[j].o)
		if di != dj {
			return di > dj
		}
		return rows[i].key < rows[j].key
	})
	return rows, onlyOld, onlyNew, changed
}

func writeDiff(w io.Writer, old, nw *diffSide, limit int) error {
	rows, onlyOld, onlyNew, changed := changedRows(old, nw)
	fmt.Fprintf(w, "%-44s %-18s %7s %7s  %s\n", "GROUP", "MODE/ACTION", "OLD", "NEW", "FIRST")
	for i, r := range rows {
		if i == limit {
			fmt.Fprintf(w, "... %d more changed rows (--limit)\n", len(rows)-limit)
			break
		}
		g, ma, _ := strings.Cut(r.key, " ")
		fmt.Fprintf(w, "%-44s %-18s %7d %7d  %s\n", g, ma, r.o, r.n, r.first.Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-32s %9s %9s\n", "RULE", "OLD", "NEW")
	rules := map[string]bool{}
	for k := range old.byRule {
		rules[k] = true
	}
	for k := range nw.byRule {
		rules[k] = true
	}
	var names []string
	for k := range rules {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "%-32s %9d %9d\n", n, old.byRule[n], nw.byRule[n])
	}
	fmt.Fprintln(w)
	for _, s := range []*diffSide{old, nw} {
		fmt.Fprintf(w, "%s (%s): %d decisions, enforced", s.name, strings.Join(s.paths, ","), s.total)
		for _, a := range evaluate.Actions {
			fmt.Fprintf(w, " %s=%d", a, s.enf[a])
		}
		fmt.Fprintln(w)
		if s.bad.N > 0 {
			s.bad.Report(w, "events")
		}
	}
	sum := fmt.Sprintf("diff events=%d old_decisions=%d new_decisions=%d rows_changed=%d only_old=%d only_new=%d count_changed=%d",
		old.rep.Events, old.total, nw.total, len(rows), onlyOld, onlyNew, changed)
	for _, a := range []string{"throttle", "block_ip", "suspend", "revoke"} {
		sum += fmt.Sprintf(" old_%s=%d new_%s=%d", a, old.enf[a], a, nw.enf[a])
	}
	if old.scorer != nil {
		ro, rn := old.scorer.Result(), nw.scorer.Result()
		fmt.Fprintln(w)
		fmt.Fprintln(w, "old set on the labels:")
		_ = ro.WriteText(w)
		fmt.Fprintln(w, "new set on the labels:")
		_ = rn.WriteText(w)
		sum += fmt.Sprintf(" old_intended_recall=%.3f new_intended_recall=%.3f old_benign_keys_revoked_or_suspended=%d new_benign_keys_revoked_or_suspended=%d old_false_actions_per_10m=%.1f new_false_actions_per_10m=%.1f",
			ro.IntendedRecall, rn.IntendedRecall, len(ro.BenignRevoked), len(rn.BenignRevoked), ro.Per10M(ro.FalseTotal()), rn.Per10M(rn.FalseTotal()))
	}
	_, err := fmt.Fprintln(w, sum)
	return err
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
