package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/backtest"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// Bounds of a backtest run from the console: it runs inside a request on
// the API's process, so it is capped in time range, events and wall time,
// and one runs at a time.
const (
	backtestMaxRange     = 31 * 24 * time.Hour
	backtestDefaultCap   = 1_000_000
	backtestMaxCap       = 5_000_000
	backtestTimeout      = 60 * time.Second
	backtestTableRows    = 500
	backtestTimelineBins = 96
	backtestMaxFile      = 256 << 10
)

// problem is a lint or test error of a rule file, shown next to the input.
type problem struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (p problem) Where() string {
	if p.Line > 0 {
		return p.File + ":" + strconv.Itoa(p.Line)
	}
	return p.File
}

func problemsOf(err error) []problem {
	var out []problem
	for _, e := range detect.FlattenErrors(err) {
		var le *detect.LoadError
		if errors.As(e, &le) {
			out = append(out, problem{File: le.File, Line: le.Line, Field: le.Field, Msg: le.Msg})
			continue
		}
		out = append(out, problem{Msg: e.Error()})
	}
	return out
}

type backtestForm struct {
	Loaded      []string // ids of the detector's loaded rules
	Unavailable string   // why backtests cannot run here
	Problems    []problem
	Tests       []problem // failed inline tests (the backtest still runs)
	TestsPassed int
	Result      *backtestResult
}

// backtestResult is what a replay would have done.
type backtestResult struct {
	From, To  time.Time
	Source    string // what was replayed
	Events    int64
	Capped    bool // stopped at the event cap
	TimedOut  bool // stopped at the time limit
	Elapsed   time.Duration
	Warmup    time.Duration // no decisions in the first Warmup of event time
	Rules     []detect.BacktestRule
	Timeline  chart
	Total     int
	Decisions []decisionJSON // the first backtestTableRows
}

func (r *backtestResult) Shown() int { return len(r.Decisions) }

func (c *Console) backtestPage(w http.ResponseWriter, r *http.Request, s *session) error {
	now := time.Now().UTC().Truncate(time.Minute)
	f := newForm(url.Values{"source": {"loaded"}, "rule": {""}, "max_events": {strconv.Itoa(backtestDefaultCap)},
		"from": {now.Add(-24 * time.Hour).Format("2006-01-02T15:04")}, "to": {now.Add(time.Minute).Format("2006-01-02T15:04")}})
	if id := r.URL.Query().Get("rule"); id != "" {
		f.Values.Set("rule", id)
	}
	c.renderBacktest(w, s, http.StatusOK, f, &backtestForm{})
	return nil
}

func (c *Console) renderBacktest(w http.ResponseWriter, s *session, status int, f *form, d *backtestForm) {
	if c.cfg.Sources.Store == nil {
		d.Unavailable = "this API has no event store, so there is no history to replay"
	}
	if c.cfg.Sources.Rules != nil {
		if set := c.cfg.Sources.Rules(); set != nil {
			for _, r := range set.Rules() {
				d.Loaded = append(d.Loaded, r.ID)
			}
		}
	}
	v := c.viewFor(s, "Backtest", "rules")
	v.Form, v.D = f, d
	c.render(w, status, "backtest", v)
}

// runBacktest lints the rules chosen (a pasted or uploaded file, or rules
// the detector has loaded), runs their inline tests, and replays the stored
// events of the range through them in a fresh engine; nothing is enforced.
func (c *Console) runBacktest(w http.ResponseWriter, r *http.Request, s *session) error {
	if s.role != "admin" {
		return &apiError{Status: 403, Code: "forbidden", Message: "backtests need an admin token (this session's token has the read role)"}
	}
	f := newForm(url.Values{})
	for _, k := range []string{"source", "rule", "rules", "from", "to", "max_events", "warmup"} {
		f.Values.Set(k, r.PostFormValue(k))
	}
	d := &backtestForm{}
	fail := func(status int) error { c.renderBacktest(w, s, status, f, d); return nil }
	if c.cfg.Sources.Store == nil {
		f.General = "backtests are unavailable: this API has no event store"
		return fail(http.StatusServiceUnavailable)
	}
	from, errF := time.Parse("2006-01-02T15:04", strings.TrimSpace(f.Get("from")))
	to, errT := time.Parse("2006-01-02T15:04", strings.TrimSpace(f.Get("to")))
	if errF != nil {
		f.Errors["from"] = "from: want a date and time (YYYY-MM-DDTHH:MM, UTC)"
	}
	if errT != nil {
		f.Errors["to"] = "to: want a date and time (YYYY-MM-DDTHH:MM, UTC)"
	}
	if errF == nil && errT == nil {
		switch {
		case !to.After(from):
			f.Errors["to"] = "to: must be after from"
		case to.Sub(from) > backtestMaxRange:
			f.Errors["to"] = fmt.Sprintf("to: the range is at most %d days from the console (use keymeter rules backtest for longer)", int(backtestMaxRange.Hours()/24))
		}
	}
	maxEvents := int64(backtestDefaultCap)
	if v := strings.TrimSpace(f.Get("max_events")); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > backtestMaxCap {
			f.Errors["max_events"] = fmt.Sprintf("max_events: want a whole number from 1 to %d", backtestMaxCap)
		}
		maxEvents = n
	}
	var warmup time.Duration
	if v := strings.TrimSpace(f.Get("warmup")); v != "" {
		w, err := time.ParseDuration(v)
		switch {
		case err != nil || w < 0:
			f.Errors["warmup"] = "warmup: want a duration such as 30m or 12h"
		case errF == nil && errT == nil && w >= to.Sub(from):
			f.Errors["warmup"] = "warmup: must be shorter than the range from-to"
		}
		warmup = w
	}
	// Linting, the schema check and the inline tests of an uploaded file
	// cost CPU and memory too: they run one at a time and under the deadline.
	select {
	case c.backtests <- struct{}{}:
		defer func() { <-c.backtests }()
	default:
		f.General = "another backtest is running on this API; try again when it ends"
		return fail(http.StatusTooManyRequests)
	}
	ctx, cancel := context.WithTimeout(r.Context(), backtestTimeout)
	defer cancel()
	set, label := c.backtestRules(ctx, r, f, d)
	if len(f.Errors) > 0 || len(d.Problems) > 0 || set == nil {
		return fail(http.StatusBadRequest)
	}
	res, err := replay(ctx, c.cfg.Sources, set, from, to, maxEvents, warmup)
	if err != nil {
		c.log.Warn("console: backtest failed", "err", err)
		f.General = "the backtest failed: " + err.Error()
		return fail(http.StatusInternalServerError)
	}
	res.Source = label
	d.Result = res
	c.log.Info("console: backtest", "rules", label, "events", res.Events, "decisions", res.Total, "elapsed", res.Elapsed)
	c.renderBacktest(w, s, http.StatusOK, f, d)
	return nil
}

// backtestRules compiles the rules the form names; problems (file:line)
// go to d.Problems, failed inline tests to d.Tests.
func (c *Console) backtestRules(ctx context.Context, r *http.Request, f *form, d *backtestForm) (*detect.RuleSet, string) {
	var rules []*detect.Rule
	label := ""
	switch f.Get("source") {
	case "loaded", "":
		var set *detect.RuleSet
		if c.cfg.Sources.Rules != nil {
			set = c.cfg.Sources.Rules()
		}
		if set == nil {
			f.Errors["rule"] = "rule: this API has no loaded rules; paste or upload a rule file"
			return nil, ""
		}
		id := f.Get("rule")
		for _, x := range set.Rules() {
			if id == "" || x.ID == id {
				rules = append(rules, x)
			}
		}
		if len(rules) == 0 {
			f.Errors["rule"] = "rule: no loaded rule has the id " + id
			return nil, ""
		}
		label = "loaded rule " + id
		if id == "" {
			label = fmt.Sprintf("all %d loaded rules", len(rules))
		}
	case "file":
		name, data, err := ruleFile(r, f)
		if err != nil {
			f.Errors["rules"] = err.Error()
			return nil, ""
		}
		label = name
		if err := detect.ValidateSchema(name, data); err != nil {
			d.Problems = problemsOf(err)
			return nil, ""
		}
		if rules, err = detect.ParseFile(name, data); err != nil {
			d.Problems = problemsOf(err)
			return nil, ""
		}
		if len(rules) == 0 {
			f.Errors["rules"] = "rules: the file holds no rule"
			return nil, ""
		}
	default:
		f.Errors["source"] = "source: want loaded or file"
		return nil, ""
	}
	set, err := detect.Compile(rules, detect.CompileOptions{})
	if err != nil {
		d.Problems = problemsOf(err)
		return nil, ""
	}
	if f.Get("source") == "file" {
		for _, t := range detect.RunTestsContext(ctx, rules, detect.CompileOptions{}) {
			if t.Passed() {
				d.TestsPassed++
				continue
			}
			d.Tests = append(d.Tests, problem{File: t.File, Line: t.Line, Field: "test " + strconv.Quote(t.Test) + " of " + t.Rule,
				Msg: "failed:\n" + strings.TrimRight(t.Diff(), "\n")})
		}
	}
	return set, label
}

// ruleFile is the uploaded file or, without one, the pasted text (kept in
// the form either way, so that nothing typed is lost).
func ruleFile(r *http.Request, f *form) (string, []byte, error) {
	if fh, hdr, err := r.FormFile("upload"); err == nil {
		defer fh.Close()
		data, err := io.ReadAll(io.LimitReader(fh, backtestMaxFile+1))
		if err != nil {
			return "", nil, fmt.Errorf("upload: %v", err)
		}
		if len(data) > backtestMaxFile {
			return "", nil, fmt.Errorf("upload: the file is over %d KiB", backtestMaxFile>>10)
		}
		if len(data) > 0 {
			f.Values.Set("rules", string(data))
			name := path.Base(strings.ReplaceAll(hdr.Filename, "\\", "/"))
			if name == "." || name == "/" || name == "" {
				name = "upload.yaml"
			}
			return name, data, nil
		}
	}
	text := f.Get("rules")
	if strings.TrimSpace(text) == "" {
		return "", nil, errors.New("rules: paste a rule file (YAML) or choose one to upload")
	}
	if len(text) > backtestMaxFile {
		return "", nil, fmt.Errorf("rules: the text is over %d KiB", backtestMaxFile>>10)
	}
	return "pasted.yaml", []byte(text), nil
}

// cappedSource stops a replay at an event cap or when ctx ends.
type cappedSource struct {
	ctx      context.Context
	src      detect.EventSource
	left     int64
	n        int64
	capped   bool
	timedOut bool
}

func (s *cappedSource) Next() (event.Event, error) {
	if s.left <= 0 {
		s.capped = true
		return event.Event{}, io.EOF
	}
	if s.n&1023 == 0 && s.ctx.Err() != nil {
		s.timedOut = true
		return event.Event{}, io.EOF
	}
	ev, err := s.src.Next()
	if err != nil && s.ctx.Err() != nil {
		s.timedOut = true
		return event.Event{}, io.EOF
	}
	s.left--
	s.n++
	return ev, err
}

// replay runs set over the stored events of [from, to).
func replay(ctx context.Context, src Sources, set *detect.RuleSet, from, to time.Time, maxEvents int64, warmup time.Duration) (*backtestResult, error) {
	res := &backtestResult{From: from, To: to, Warmup: warmup}
	bins := backtestTimelineBins
	// Bins of whole minutes, at most backtestTimelineBins of them.
	width := max((to.Sub(from)/time.Duration(bins) + time.Minute - 1).Truncate(time.Minute), time.Minute)
	bins = int((to.Sub(from) + width - 1) / width)
	counts := map[string][]float64{}
	sink := detect.SinkFunc(func(d *keymeterv1.Decision) {
		t := time.Unix(0, d.TimeUnixNano).UTC()
		res.Total++
		name := detect.ModeName(d.Mode) + " " + detect.ActionName(d.Action)
		if counts[name] == nil {
			counts[name] = make([]float64, bins)
		}
		if i := int(t.Sub(from) / width); i >= 0 && i < bins {
			counts[name][i]++
		}
		if len(res.Decisions) < backtestTableRows {
			res.Decisions = append(res.Decisions, decisionJSON{ID: d.Id, Time: t, RuleID: d.RuleId, RuleVersion: d.RuleVersion,
				Mode: detect.ModeName(d.Mode), Action: detect.ActionName(d.Action), Project: d.Project, KeyID: d.KeyId,
				ClientIP: d.ClientIp, Group: d.Group, Reason: d.Reason})
		}
	})
	ss := backtest.NewStoreSource(ctx, src.Store, from, to)
	defer ss.Stop()
	cs := &cappedSource{ctx: ctx, src: ss, left: maxEvents}
	start := time.Now()
	rep, err := detect.Backtest(set, cs, detect.BacktestOptions{From: from, To: to, Config: detect.Config{Sink: sink, Warmup: warmup}})
	if err != nil {
		return nil, err
	}
	res.Elapsed = time.Since(start).Round(time.Millisecond)
	res.Events, res.Capped, res.TimedOut, res.Rules = rep.Events, cs.capped, cs.timedOut, rep.Rules
	names := make([]string, 0, len(counts))
	for n := range counts {
		names = append(names, n)
	}
	sort.Strings(names)
	for i := range bins {
		t := from.Add(time.Duration(i) * width)
		res.Timeline.Times = append(res.Timeline.Times, t.Unix())
		for _, n := range names {
			if v := counts[n][i]; v > 0 {
				res.Timeline.Rows = append(res.Timeline.Rows, chartRow{Start: t, Outcome: n, Requests: uint64(v)})
				res.Timeline.Total += uint64(v)
			}
		}
	}
	for _, n := range names {
		res.Timeline.Series = append(res.Timeline.Series, chartLine{Name: n, Values: counts[n]})
	}
	return res, nil
}
