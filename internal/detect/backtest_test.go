package detect

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// TestBacktestMatchesLive replays, from NDJSON, the events a live engine
// saw and expects the same decisions, ids included.
func TestBacktestMatchesLive(t *testing.T) {
	set, err := LoadPaths(CompileOptions{}, "../../rules")
	if err != nil {
		t.Fatal(err)
	}
	// Live: the synthetic mix plus a geography attack on one key.
	s := NewSynth(500, t0, 50*time.Millisecond, 9)
	var all []event.Event
	batch := make([]event.Event, 1000)
	for i := 0; i < 20; i++ {
		s.Fill(batch)
		for j := range batch {
			e := batch[j]
			e.ID = fmt.Sprintf("ev-%d-%d", i, j)
			all = append(all, e)
		}
	}
	last := all[len(all)-1].Time
	for i := 0; i < 1500; i++ { // an anonymous flood from one /24
		all = append(all, event.Event{ID: fmt.Sprintf("atk-%d", i), Time: last.Add(time.Duration(i) * 20 * time.Millisecond),
			Outcome: event.OutcomeMissing, ClientIP: fmt.Sprintf("203.0.113.%d", i%200), Country: "NL", ASN: 64512})
	}
	live := &capture{}
	e, _ := New(Config{Sink: live}, set)
	var nd bytes.Buffer
	for i := range all {
		e.Process(&all[i])
		b, err := json.Marshal(all[i])
		if err != nil {
			t.Fatal(err)
		}
		nd.Write(b)
		nd.WriteByte('\n')
	}
	replay := &capture{}
	rep, err := Backtest(set, event.NewNDJSONReader(&nd), BacktestOptions{Config: Config{Sink: replay}})
	if err != nil {
		t.Fatal(err)
	}
	ids := func(c *capture) []string {
		var out []string
		for _, d := range c.ds {
			out = append(out, d.Id+" "+ModeName(d.Mode)+" "+ActionName(d.Action))
		}
		sort.Strings(out)
		return out
	}
	a, b := ids(live), ids(replay)
	if len(a) == 0 || strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Fatalf("live %d decisions, backtest %d:\n%s\n---\n%s", len(a), len(b), strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
	if !strings.Contains(strings.Join(a, "\n"), "anonymous-burst/2/") {
		t.Errorf("the attack did not fire: %v", a)
	}
	if rep.Events != int64(len(all)) {
		t.Errorf("report: %d events", rep.Events)
	}
	var geo BacktestRule
	for _, r := range rep.Rules {
		if r.ID == "anonymous-burst" {
			geo = r
		}
	}
	if geo.GroupsFired < 1 || geo.Decisions == 0 || geo.First == nil {
		t.Errorf("anonymous-burst: %+v", geo)
	}
	victim := false
	for _, d := range replay.ds {
		victim = victim || (d.Group == "203.0.113.0/24" && d.Action == keymeterv1.Action_ACTION_BLOCK_IP && d.ClientIp == "203.0.113.0/24")
	}
	if !victim {
		t.Error("no network block for 203.0.113.0/24")
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil || !strings.Contains(text.String(), "anonymous-burst") {
		t.Errorf("text report: %v\n%s", err, text.String())
	}
}

type sliceSource struct {
	evs []event.Event
	i   int
}

func (s *sliceSource) Next() (event.Event, error) {
	if s.i >= len(s.evs) {
		return event.Event{}, io.EOF
	}
	s.i++
	return s.evs[s.i-1], nil
}

func TestBacktestTimeRange(t *testing.T) {
	set := mustSet(t, fmt.Sprintf(revokeRule, "enforce", "10m"))
	var evs []event.Event
	for i := 0; i < 10; i++ {
		evs = append(evs, ev(i, time.Duration(i)*time.Second, "k", "192.0.2.1", event.OutcomeValid))
	}
	evs = append(evs, ev(99, 0, "k", "192.0.2.1", event.OutcomeValid)) // out of order
	sink := &capture{}
	rep, err := Backtest(set, &sliceSource{evs: evs}, BacktestOptions{From: t0.Add(2 * time.Second), To: t0.Add(6 * time.Second), Config: Config{Sink: sink}})
	if err != nil {
		t.Fatal(err)
	}
	// Events 2..5 are in range (4 events): alert at the 3rd, no revoke.
	if rep.Events != 4 || rep.Skipped != 7 || len(sink.ds) != 1 || sink.ds[0].Action != keymeterv1.Action_ACTION_ALERT {
		t.Errorf("events %d skipped %d decisions %v", rep.Events, rep.Skipped, sink.lines())
	}
}
