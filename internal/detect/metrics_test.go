package detect

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keymeter/keymeter/internal/event"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	src := fmt.Sprintf(revokeRule, "dry_run", "10m")
	e, _ := New(Config{Sink: &capture{}, Metrics: m}, mustSet(t, src))
	for i := 0; i < 5; i++ {
		x := ev(i, time.Duration(i)*time.Second, fmt.Sprintf("k%d", i%2), "192.0.2.1", event.OutcomeValid)
		e.Process(&x)
	}
	x := ev(9, 0, "", "192.0.2.1", event.OutcomeMissing) // evaluated, not matched
	e.Process(&x)
	e.Flush()
	e.Flush() // publishing twice adds nothing
	checks := []struct {
		name string
		got  float64
		want float64
	}{
		{"evaluations", value(t, m.Evaluations.WithLabelValues("rv")), 6},
		{"matches", value(t, m.Matches.WithLabelValues("rv")), 5},
		{"groups", value(t, m.Groups.WithLabelValues("rv")), 2},
		{"dry-run alerts", value(t, m.Firings.WithLabelValues("rv", "dry_run", "alert")), 1},
		{"rules", value(t, m.Rules), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if fams, err := reg.Gather(); err != nil || len(fams) == 0 {
		t.Errorf("gather: %d %v", len(fams), err)
	}
}

func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	t.Fatalf("not a counter or gauge: %v", &d)
	return 0
}

func TestParallelSwapKeepsRulesOnTheirEngine(t *testing.T) {
	set := mustSet(t, fmt.Sprintf(revokeRule, "enforce", "10m"))
	sink := &capture{}
	p, err := NewParallel(Config{Sink: sink}, set, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	feed := func(from, n int) {
		var evs []event.Event
		for i := from; i < from+n; i++ {
			evs = append(evs, ev(i, time.Duration(i)*time.Second, "k", "192.0.2.1", event.OutcomeValid))
		}
		p.ProcessBatch(evs)
	}
	feed(0, 3)
	two := mustSet(t, fmt.Sprintf(revokeRule, "enforce", "10m")+"---\n"+
		strings.Replace(fmt.Sprintf(revokeRule, "enforce", "10m"), "id: rv", "id: rv2", 1))
	p.Swap(two)
	feed(3, 2) // rv kept its window: revoke at the 5th event
	p.Flush()
	got := strings.Join(sink.lines(), "\n")
	if got != "rv enforce alert k\nrv enforce revoke k" {
		t.Fatalf("decisions:\n%s", got)
	}
	if n := len(p.Stats().Rules); n != 2 {
		t.Errorf("rules: %d", n)
	}
}
