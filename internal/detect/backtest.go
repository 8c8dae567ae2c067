package detect

import (
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// EventSource yields events in time order and io.EOF at the end;
// *event.NDJSONReader is one, a store query cursor can be another.
type EventSource interface {
	Next() (event.Event, error)
}

// BacktestOptions tune a backtest.
type BacktestOptions struct {
	From, To time.Time // events outside [From, To) are skipped; zero: no bound
	// Config is the engine's configuration (allowlist, breaker). Its Sink,
	// if set, also receives every decision.
	Config Config
	// Progress, if set, is called every 1024 events.
	Progress func(events int64, at time.Time)
}

// BacktestReport is what a replay would have done, per rule.
type BacktestReport struct {
	Events     int64          `json:"events"`
	Skipped    int64          `json:"skipped"`      // outside From/To
	OutOfOrder int64          `json:"out_of_order"` // older than an event before them
	Rules      []BacktestRule `json:"rules"`
}

// BacktestRule is one rule's line of the report.
type BacktestRule struct {
	ID          string            `json:"id"`
	Version     uint32            `json:"version"`
	Mode        string            `json:"mode"`
	Matched     uint64            `json:"matched"`
	Groups      int               `json:"groups_active"`
	GroupsFired int               `json:"groups_fired"`
	Decisions   uint64            `json:"decisions"`
	Firings     map[string]uint64 `json:"firings"` // by mode
	Actions     map[string]uint64 `json:"actions"` // "<mode>/<action>"
	First       *time.Time        `json:"first_decision,omitempty"`
	Last        *time.Time        `json:"last_decision,omitempty"`
	Evictions   uint64            `json:"evictions"`
	Tripped     bool              `json:"breaker_tripped"`
}

type backtestSink struct {
	next        Sink
	fired       map[string]map[string]bool
	first, last map[string]time.Time
}

func (b *backtestSink) Decide(d *keymeterv1.Decision) {
	if b.fired[d.RuleId] == nil {
		b.fired[d.RuleId] = map[string]bool{}
	}
	b.fired[d.RuleId][d.Group] = true
	t := time.Unix(0, d.TimeUnixNano).UTC()
	if _, ok := b.first[d.RuleId]; !ok {
		b.first[d.RuleId] = t
	}
	b.last[d.RuleId] = t
	if b.next != nil {
		b.next.Decide(d)
	}
}

// Backtest replays src through set in event time, in a fresh engine, as
// the detector would have run it, and reports what would have fired. When
// src fails (a bad line), the report of what was replayed up to there is
// returned with the error.
func Backtest(set *RuleSet, src EventSource, opts BacktestOptions) (*BacktestReport, error) {
	bs := &backtestSink{next: opts.Config.Sink, fired: map[string]map[string]bool{}, first: map[string]time.Time{}, last: map[string]time.Time{}}
	cfg := opts.Config
	cfg.Sink = bs
	eng, err := New(cfg, set)
	if err != nil {
		return nil, err
	}
	rep := &BacktestReport{}
	var watermark time.Time
	var srcErr error
	for {
		ev, err := src.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			srcErr = err
			break
		}
		if (!opts.From.IsZero() && ev.Time.Before(opts.From)) || (!opts.To.IsZero() && !ev.Time.Before(opts.To)) {
			rep.Skipped++
			continue
		}
		if ev.Time.Before(watermark) {
			rep.OutOfOrder++
		} else {
			watermark = ev.Time
		}
		eng.Process(&ev)
		rep.Events++
		if opts.Progress != nil && rep.Events&1023 == 0 {
			opts.Progress(rep.Events, watermark)
		}
	}
	eng.Flush()
	if opts.Progress != nil {
		opts.Progress(rep.Events, watermark)
	}
	for _, st := range eng.Stats().Rules {
		r := BacktestRule{ID: st.ID, Version: st.Version, Mode: st.Effective, Matched: st.Matches, Groups: st.Groups,
			GroupsFired: len(bs.fired[st.ID]), Firings: st.Firings, Actions: st.Actions, Evictions: st.Evictions, Tripped: st.Tripped}
		for _, v := range st.Firings {
			r.Decisions += v
		}
		if t, ok := bs.first[st.ID]; ok {
			l := bs.last[st.ID]
			r.First, r.Last = &t, &l
		}
		rep.Rules = append(rep.Rules, r)
	}
	return rep, srcErr
}

// WriteText prints the report as a table.
func (rep *BacktestReport) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "%-28s %-4s %-10s %10s %8s %7s %9s  %s\n", "RULE", "VER", "MODE", "MATCHED", "GROUPS", "FIRED", "DECISIONS", "ACTIONS WOULD HAVE BEEN TAKEN")
	for _, r := range rep.Rules {
		var acts []string
		for k, v := range r.Actions {
			acts = append(acts, fmt.Sprintf("%s=%d", k, v))
		}
		sort.Strings(acts)
		mode := r.Mode
		if r.Tripped {
			mode += "*"
		}
		line := fmt.Sprintf("%-28s %-4d %-10s %10d %8d %7d %9d ", r.ID, r.Version, mode, r.Matched, r.Groups, r.GroupsFired, r.Decisions)
		for _, a := range acts {
			line += " " + a
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "%d events replayed, %d outside the time range, %d out of time order (* = circuit breaker tripped)\n",
		rep.Events, rep.Skipped, rep.OutOfOrder)
	return err
}
