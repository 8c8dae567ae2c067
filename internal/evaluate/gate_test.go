//go:build !race

// The evaluation gate runs outside -race (it replays millions of events);
// `make test` runs it on its own line without -race.

package evaluate_test

import (
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/evaluate"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/loadgen"
)

// gateConfig is the evaluation set of the gate: two days with every kind of
// hard negative (the surge day included) and one of each attack, from a
// fixed seed.
var gateConfig = loadgen.EvalConfig{Start: time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC), Seed: 20261127, Duration: 48 * time.Hour, Scale: 0.3, Attacks: 1, Surge: 1}

// genSource feeds a backtest from the generator running on its own goroutine.
type genSource struct {
	ch   chan []event.Event
	errc chan error
	cur  []event.Event
	pos  int
}

func newGenSource(ev *loadgen.Eval, onEvent func(*event.Event)) *genSource {
	s := &genSource{ch: make(chan []event.Event, 16), errc: make(chan error, 1)}
	go func() {
		defer close(s.ch)
		batch := make([]event.Event, 0, 4096)
		err := ev.Run(func(e *event.Event) error {
			onEvent(e)
			batch = append(batch, *e)
			if len(batch) == cap(batch) {
				s.ch <- batch
				batch = make([]event.Event, 0, 4096)
			}
			return nil
		})
		if len(batch) > 0 {
			s.ch <- batch
		}
		s.errc <- err
	}()
	return s
}

func (s *genSource) Next() (event.Event, error) {
	for s.pos >= len(s.cur) {
		b, ok := <-s.ch
		if !ok {
			if err := <-s.errc; err != nil {
				return event.Event{}, err
			}
			return event.Event{}, io.EOF
		}
		s.cur, s.pos = b, 0
	}
	s.pos++
	return s.cur[s.pos-1], nil
}

// TestEvaluationGate backtests the repository's rules/ on a generated,
// labelled evaluation set: no benign key may be revoked or suspended, and
// every attack must get its intended action (and none it forbids).
func TestEvaluationGate(t *testing.T) {
	if testing.Short() {
		t.Skip("the evaluation gate replays millions of events")
	}
	_, file, _, _ := runtime.Caller(0)
	rules := filepath.Join(filepath.Dir(file), "..", "..", "rules")
	set, err := detect.LoadPaths(detect.CompileOptions{}, rules)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := loadgen.NewEval(gateConfig)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := evaluate.NewScorer(ev.Labels, 0)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	// The backtest's defaults, as `keymeter rules backtest` runs them.
	rep, err := detect.Backtest(set, newGenSource(ev, sc.Event), detect.BacktestOptions{
		Config: detect.Config{MaxRevocationsPerHour: 10, Sink: sc}})
	if err != nil {
		t.Fatal(err)
	}
	res := sc.Result()
	var b strings.Builder
	_ = rep.WriteText(&b)
	_ = res.WriteText(&b)
	t.Logf("%d events in %s\n%s\n%s", rep.Events, time.Since(began).Round(time.Millisecond), b.String(), res.Summary())
	if len(res.Labels) < len(loadgen.EvalScenarios) {
		t.Errorf("the gate set has %d labels, want one per scenario (%d)", len(res.Labels), len(loadgen.EvalScenarios))
	}
	for _, k := range res.BenignRevoked {
		t.Errorf("benign key %s: %s by %s at %s", k.Key, k.Action, k.Rule, k.At.Format(time.RFC3339))
	}
	for _, l := range res.Labels {
		switch {
		case len(l.Forbidden) > 0:
			t.Errorf("%s: forbidden action %v taken on %s", l.ID, l.Forbidden, l.Group)
		case !l.Intended:
			t.Errorf("%s: intended action %s not taken on %s (detected %t, strongest enforced %q, rules %v)", l.ID, l.IntendedAction, l.Group, l.Detected, l.Strongest, l.Rules)
		}
	}
	if os.Getenv("KEYMETER_GATE_SUMMARY") != "" {
		_ = os.WriteFile(os.Getenv("KEYMETER_GATE_SUMMARY"), []byte(b.String()+res.Summary()+"\n"), 0o644)
	}
}
