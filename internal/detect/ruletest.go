package detect

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// DefaultTestStart is when inline test events start unless a test says.
var DefaultTestStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// TestResult is the outcome of one inline test.
type TestResult struct {
	Rule     string
	File     string
	Line     int
	Test     string
	Events   int
	Expected []string // one line per expected firing, sorted
	Actual   []string
	Err      error // the test could not run
}

// Passed reports whether the actual firings equal the expected ones.
func (r TestResult) Passed() bool {
	return r.Err == nil && strings.Join(r.Expected, "\n") == strings.Join(r.Actual, "\n")
}

// Diff shows expected lines missing from the actual firings ("-") and
// actual firings nobody expected ("+").
func (r TestResult) Diff() string {
	if r.Err != nil {
		return "  error: " + r.Err.Error() + "\n"
	}
	exp := map[string]bool{}
	for _, l := range r.Expected {
		exp[l] = true
	}
	act := map[string]bool{}
	for _, l := range r.Actual {
		act[l] = true
	}
	var b strings.Builder
	for _, l := range r.Expected {
		if !act[l] {
			b.WriteString("  - " + l + "\n")
		}
	}
	for _, l := range r.Actual {
		if !exp[l] {
			b.WriteString("  + " + l + "\n")
		}
	}
	return b.String()
}

// firingLine is how expected and actual firings are compared and printed.
func firingLine(action, group, mode string, times int) string {
	return fmt.Sprintf("%s group=%q mode=%s times=%d", action, group, mode, times)
}

// RunTests runs the inline tests of rules, each rule alone in a fresh
// engine with its own compiled copy.
func RunTests(rules []*Rule, opts CompileOptions) []TestResult {
	return RunTestsContext(context.Background(), rules, opts)
}

// RunTestsContext is RunTests that stops when ctx ends: the tests not run
// then fail with ctx's error.
func RunTestsContext(ctx context.Context, rules []*Rule, opts CompileOptions) []TestResult {
	var out []TestResult
	for _, r := range rules {
		for i, tc := range r.Tests {
			res := TestResult{Rule: r.ID, File: r.File, Line: r.pos.of(fmt.Sprintf("tests[%d]", i)), Test: tc.Name}
			if err := ctx.Err(); err != nil {
				res.Err = fmt.Errorf("not run: %w", err)
				out = append(out, res)
				continue
			}
			res.Expected, res.Actual, res.Events, res.Err = runTest(r, tc, opts)
			out = append(out, res)
		}
	}
	return out
}

func runTest(r *Rule, tc TestCase, opts CompileOptions) (exp, act []string, n int, err error) {
	set, err := Compile([]*Rule{r}, opts)
	if err != nil {
		return nil, nil, 0, err
	}
	counts := map[string]int{}
	var keys []string
	sink := SinkFunc(func(d *keymeterv1.Decision) {
		k := ActionName(d.Action) + "\x00" + d.Group + "\x00" + ModeName(d.Mode)
		if counts[k] == 0 {
			keys = append(keys, k)
		}
		counts[k]++
	})
	cfg := Config{Sink: sink}
	if len(tc.Baselines) > 0 {
		cfg.Baselines = BaselineFunc(func(_, g string) (float64, bool) {
			v, ok := tc.Baselines[g]
			return v, ok
		})
	}
	if len(tc.Kinds) > 0 {
		cfg.KeyKind = func(id string) string { return tc.Kinds[id] }
	}
	for _, a := range tc.Allow {
		if _, err := parsePrefix(a); err == nil && (strings.Contains(a, ".") || strings.Contains(a, ":")) {
			cfg.Allowlist.CIDRs = append(cfg.Allowlist.CIDRs, a)
		} else {
			cfg.Allowlist.Keys = append(cfg.Allowlist.Keys, a)
		}
	}
	eng, err := New(cfg, set)
	if err != nil {
		return nil, nil, 0, err
	}
	evs, err := GenerateEvents(tc)
	if err != nil {
		return nil, nil, 0, err
	}
	// One event at a time, as a backtest replays: test events are often
	// minutes apart, and a batch would let profiles learn ahead of the
	// event being judged.
	for i := range evs {
		// Another rule (not under test) keeps signalling these keys.
		if slices.Contains(tc.Corroborated, evs[i].KeyID) {
			eng.signal(evs[i].KeyID, "test:corroborated", evs[i].Time.UnixNano())
		}
		eng.Process(&evs[i])
	}

	for _, k := range keys {
		p := strings.Split(k, "\x00")
		act = append(act, firingLine(p[0], p[1], p[2], counts[k]))
	}
	for _, x := range tc.Expect {
		mode := x.Mode
		if mode == "" {
			mode = r.Mode
		}
		times := x.Times
		if times == 0 {
			times = 1
		}
		exp = append(exp, firingLine(x.Action, x.Group, mode, times))
	}
	sort.Strings(exp)
	sort.Strings(act)
	return exp, act, len(evs), nil
}

// GenerateEvents expands a test's event sequences into events sorted by
// time (sequences interleave; ties keep sequence order).
func GenerateEvents(tc TestCase) ([]event.Event, error) {
	start := DefaultTestStart
	if tc.Start != "" {
		t, err := parseTime(tc.Start)
		if err != nil {
			return nil, err
		}
		start = t
	}
	total := 0
	for _, seq := range tc.Events {
		total += max(seq.Count, 1)
		if seq.Count < 0 || total > MaxTestEvents {
			return nil, fmt.Errorf("the test generates over %d events", MaxTestEvents)
		}
	}
	var evs []event.Event
	for si, seq := range tc.Events {
		n := seq.Count
		if n == 0 {
			n = 1
		}
		every := seq.Every.D()
		if every == 0 {
			every = time.Second
		}
		for i := 0; i < n; i++ {
			ev := event.Event{
				ID:         "t" + strconv.Itoa(si) + "-" + strconv.Itoa(i),
				Time:       start.Add(seq.At.D() + time.Duration(i)*every),
				Project:    or(seq.Project, "proj_test"),
				KeyID:      seq.KeyID,
				ClientIP:   or(seq.IP, "192.0.2.1"),
				Country:    or(seq.Country, "US"),
				ASN:        seq.ASN,
				Method:     or(seq.Method, "GET"),
				Host:       or(seq.Host, "api.example.com"),
				Route:      or(seq.Route, "/v1/items"),
				Status:     seq.Status,
				BytesIn:    seq.BytesIn,
				BytesOut:   seq.BytesOut,
				UserAgent:  or(seq.UserAgent, "test/1.0"),
				VerifierID: "test",
				CostUnits:  seq.CostUnits,
			}
			if ev.ASN == 0 {
				ev.ASN = 64500
			}
			if ev.Status == 0 {
				ev.Status = 200
			}
			ev.Outcome = event.OutcomeValid
			if seq.Outcome != "" {
				o, err := event.ParseOutcome(seq.Outcome)
				if err != nil {
					return nil, err
				}
				ev.Outcome = o
			}
			for f, vals := range seq.Cycle {
				if len(vals) == 0 {
					continue
				}
				if err := setField(&ev, f, vals[i%len(vals)]); err != nil {
					return nil, err
				}
			}
			for _, f := range []*string{&ev.KeyID, &ev.Project, &ev.ClientIP, &ev.Country, &ev.Method, &ev.Host, &ev.Route, &ev.UserAgent} {
				*f = expandIndex(*f, i)
			}
			evs = append(evs, ev)
		}
	}
	sort.SliceStable(evs, func(a, b int) bool { return evs[a].Time.Before(evs[b].Time) })
	return evs, nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// expandIndex replaces {i} with i and {i%N} with i mod N.
func expandIndex(s string, i int) string {
	for {
		a := strings.Index(s, "{i")
		if a < 0 {
			return s
		}
		b := strings.IndexByte(s[a:], '}')
		if b < 0 {
			return s
		}
		spec := s[a+2 : a+b]
		v := i
		if strings.HasPrefix(spec, "%") {
			if m, err := strconv.Atoi(spec[1:]); err == nil && m > 0 {
				v = i % m
			}
		} else if spec != "" {
			return s
		}
		s = s[:a] + strconv.Itoa(v) + s[a+b+1:]
	}
}

func setField(ev *event.Event, f, v string) error {
	num := func() (uint64, error) {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cycle.%s: %q is not a number", f, v)
		}
		return n, nil
	}
	var err error
	var n uint64
	switch f {
	case "key_id":
		ev.KeyID = v
	case "project":
		ev.Project = v
	case "outcome":
		ev.Outcome, err = event.ParseOutcome(v)
	case "ip":
		ev.ClientIP = v
	case "country":
		ev.Country = v
	case "method":
		ev.Method = v
	case "host":
		ev.Host = v
	case "route":
		ev.Route = v
	case "user_agent":
		ev.UserAgent = v
	case "verifier_id":
		ev.VerifierID = v
	case "asn":
		n, err = num()
		ev.ASN = uint32(n)
	case "status":
		n, err = num()
		ev.Status = uint16(n)
	case "latency_us":
		n, err = num()
		ev.LatencyUS = uint32(n)
	case "bytes_in":
		ev.BytesIn, err = num()
	case "bytes_out":
		ev.BytesOut, err = num()
	case "cost_units":
		n, err = num()
		ev.CostUnits = uint32(n)
	default:
		return fmt.Errorf("cycle: unknown field %q", f)
	}
	return err
}
