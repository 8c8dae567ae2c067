package detect

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"cel.dev/cel-go/common/types"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

type capture struct{ ds []*keymeterv1.Decision }

func (c *capture) Decide(d *keymeterv1.Decision) { c.ds = append(c.ds, d) }

func (c *capture) lines() []string {
	var out []string
	for _, d := range c.ds {
		out = append(out, fmt.Sprintf("%s %s %s %s", d.RuleId, ModeName(d.Mode), ActionName(d.Action), d.Group))
	}
	return out
}

func mustSet(t testing.TB, src string) *RuleSet {
	t.Helper()
	rules, err := ParseFile("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	set, err := Compile(rules, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func ev(i int, at time.Duration, key, ip string, o event.Outcome) event.Event {
	return event.Event{ID: fmt.Sprintf("e%d", i), Time: t0.Add(at), Project: "p", KeyID: key, ClientIP: ip,
		Outcome: o, Country: "US", ASN: 64500, Method: "GET", Host: "h", Route: "/r", Status: 200}
}

const revokeRule = `id: rv
version: 3
name: revoke on unknown burst
severity: high
mode: %s
match: outcome == "valid" && key_id != ""
aggregate:
  group_by: [key_id]
  window: 1m
  distinct: [ip]
suppress: %s
actions:
  - type: alert
    when: count >= 3
  - type: revoke
    when: count >= 5
    corroboration: none
`

func TestModesAndSuppression(t *testing.T) {
	tests := []struct {
		name     string
		mode     string
		suppress string
		events   int
		every    time.Duration
		want     []string
	}{
		{"enforce fires alert then revoke once each", "enforce", "10m", 20, time.Second,
			[]string{"rv enforce alert k", "rv enforce revoke k"}},
		{"dry-run records what would have happened", "dry_run", "10m", 20, time.Second,
			[]string{"rv dry_run alert k", "rv dry_run revoke k"}},
		{"disabled skips the rule", "disabled", "10m", 20, time.Second, nil},
		{"suppression expires and fires again", "enforce", "30s", 60, time.Second,
			[]string{"rv enforce alert k", "rv enforce revoke k", "rv enforce alert k", "rv enforce revoke k"}},
		{"below threshold nothing", "enforce", "10m", 2, time.Second, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := &capture{}
			e, err := New(Config{Sink: sink}, mustSet(t, fmt.Sprintf(revokeRule, tt.mode, tt.suppress)))
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < tt.events; i++ {
				x := ev(i, time.Duration(i)*tt.every, "k", "192.0.2.1", event.OutcomeValid)
				e.Process(&x)
			}
			if got := strings.Join(sink.lines(), "\n"); got != strings.Join(tt.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", got, strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestDecisionEvidence(t *testing.T) {
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, mustSet(t, fmt.Sprintf(revokeRule, "enforce", "10m")))
	for i := 0; i < 5; i++ {
		x := ev(i, time.Duration(i)*time.Second, "k", fmt.Sprintf("192.0.2.%d", i%2), event.OutcomeValid)
		e.Process(&x)
	}
	if len(sink.ds) != 2 {
		t.Fatalf("got %d decisions", len(sink.ds))
	}
	d := sink.ds[1]
	if d.RuleId != "rv" || d.RuleVersion != 3 || d.Severity != "high" || d.KeyId != "k" || d.Project != "p" {
		t.Errorf("decision header: %v", d)
	}
	if d.Figures["count"] != 5 || d.Figures["distinct_ip"] != 2 || d.Figures["window_seconds"] != 60 {
		t.Errorf("figures: %v", d.Figures)
	}
	// The first event of each sub-window (3.75 s here), then the trigger.
	if strings.Join(d.SampleEventIds, ",") != "e0,e4" {
		t.Errorf("samples: %v", d.SampleEventIds)
	}
	if d.TimeUnixNano != t0.Add(4*time.Second).UnixNano() || d.Id == "" || d.Id == sink.ds[0].Id {
		t.Errorf("id/time: %q %d", d.Id, d.TimeUnixNano)
	}
}

func TestCircuitBreaker(t *testing.T) {
	sink := &capture{}
	e, _ := New(Config{Sink: sink, MaxRevocationsPerHour: 2}, mustSet(t, fmt.Sprintf(revokeRule, "enforce", "10m")))
	run := func(key string, base time.Duration) {
		for i := 0; i < 5; i++ {
			x := ev(i, base+time.Duration(i)*time.Second, key, "192.0.2.1", event.OutcomeValid)
			e.Process(&x)
		}
	}
	for k := 0; k < 4; k++ {
		run(fmt.Sprintf("k%d", k), time.Duration(k)*time.Minute)
	}
	want := []string{
		"rv enforce alert k0", "rv enforce revoke k0",
		"rv enforce alert k1", "rv enforce revoke k1",
		"rv enforce alert k2", "rv enforce alert rule rv", "rv dry_run revoke k2", // breaker alert, then the revoke in dry-run
		"rv enforce alert k3", "rv dry_run revoke k3", // alerts go on; one breaker alert per trip
	}
	if got := strings.Join(sink.lines(), "\n"); got != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	if !strings.Contains(sink.ds[5].Reason, "circuit breaker") || !strings.Contains(sink.ds[5].Reason, "k0, k1") {
		t.Errorf("breaker alert reason: %q", sink.ds[5].Reason)
	}
	e.Flush()
	if st := e.Stats().Rules[0]; !st.Tripped || st.Effective != "dry_run" {
		t.Errorf("stats: %+v", st)
	}
	// Re-armed by an operator, the rule enforces again.
	e.ResetBreaker("rv")
	sink.ds = nil
	run("k9", 10*time.Minute)
	if got := strings.Join(sink.lines(), "\n"); got != "rv enforce alert k9\nrv enforce revoke k9" {
		t.Errorf("after reset: %s", got)
	}
}

func TestAllowlist(t *testing.T) {
	tests := []struct {
		name  string
		allow Allowlist
		key   string
		ip    string
		want  string
	}{
		{"key allowlisted", Allowlist{Keys: []string{"k"}}, "k", "192.0.2.1", "dry_run"},
		{"cidr allowlisted", Allowlist{CIDRs: []string{"192.0.2.0/24"}}, "k", "192.0.2.1", "dry_run"},
		{"single ip allowlisted", Allowlist{CIDRs: []string{"192.0.2.1"}}, "k", "192.0.2.1", "dry_run"},
		{"v6 net allowlisted", Allowlist{CIDRs: []string{"2001:db8::/32"}}, "k", "2001:db8::7", "dry_run"},
		{"other key", Allowlist{Keys: []string{"other"}, CIDRs: []string{"198.51.100.0/24"}}, "k", "192.0.2.1", "enforce"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := &capture{}
			e, err := New(Config{Sink: sink, Allowlist: tt.allow}, mustSet(t, fmt.Sprintf(revokeRule, "enforce", "10m")))
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 5; i++ {
				x := ev(i, time.Duration(i)*time.Second, tt.key, tt.ip, event.OutcomeValid)
				e.Process(&x)
			}
			if len(sink.ds) != 2 {
				t.Fatalf("got %d decisions", len(sink.ds))
			}
			for _, d := range sink.ds {
				if ModeName(d.Mode) != tt.want {
					t.Errorf("%s: mode %s, want %s", ActionName(d.Action), ModeName(d.Mode), tt.want)
				}
			}
		})
	}
	if _, err := New(Config{Sink: &capture{}, Allowlist: Allowlist{CIDRs: []string{"nonsense"}}}, nil); err == nil {
		t.Error("bad CIDR accepted")
	}
}

func TestEvictionAndExpiry(t *testing.T) {
	src := strings.Replace(fmt.Sprintf(revokeRule, "enforce", "1m"), "  window: 1m\n", "  window: 1m\n  max_groups: 10\n", 1)
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, mustSet(t, src))
	for i := 0; i < 100; i++ {
		x := ev(i, time.Duration(i)*time.Millisecond, fmt.Sprintf("k%d", i), "192.0.2.1", event.OutcomeValid)
		e.Process(&x)
	}
	e.Flush()
	st := e.Stats().Rules[0]
	if st.Groups != 10 || st.Evictions != 90 {
		t.Errorf("groups %d evictions %d, want 10 and 90", st.Groups, st.Evictions)
	}
	// An hour later, traffic from one key sweeps the idle groups away.
	for i := 0; i < 20; i++ {
		x := ev(i, time.Hour+time.Duration(i)*time.Second, "fresh", "192.0.2.1", event.OutcomeValid)
		e.Process(&x)
	}
	e.Flush()
	st = e.Stats().Rules[0]
	// "fresh" arrives at the cap and evicts one group; the sweep drops the
	// other nine.
	if st.Groups != 1 || st.Expired != 9 || st.Evictions != 91 {
		t.Errorf("groups %d expired %d evictions %d, want 1, 9 and 91", st.Groups, st.Expired, st.Evictions)
	}
}

func TestLateEvents(t *testing.T) {
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, mustSet(t, fmt.Sprintf(revokeRule, "enforce", "10m")))
	x := ev(0, time.Hour, "k", "192.0.2.1", event.OutcomeValid)
	e.Process(&x)
	for i := 1; i < 10; i++ {
		x := ev(i, 0, "k", "192.0.2.1", event.OutcomeValid) // an hour older than the window
		e.Process(&x)
	}
	e.Flush()
	if st := e.Stats().Rules[0]; st.Late != 9 || len(sink.ds) != 0 {
		t.Errorf("late %d decisions %d", st.Late, len(sink.ds))
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestHotReloadRefusesBadFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), fmt.Sprintf(revokeRule, "enforce", "10m"))
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, nil)
	r := &Reloader{Paths: []string{dir}, Swap: e.Swap}
	if ok, err := r.Reload(); !ok || err != nil {
		t.Fatalf("first load: %v %v", ok, err)
	}
	i := 0
	feed := func(n int) {
		for k := 0; k < n; k++ {
			x := ev(i, time.Duration(i)*time.Second, "k", "192.0.2.1", event.OutcomeValid)
			e.Process(&x)
			i++
		}
	}
	feed(3) // alert
	// A broken file next to the good one: the whole new set is refused.
	writeFile(t, filepath.Join(dir, "b.yaml"), "id: broken\nversion: 1\nmatch: count >\n")
	if ok, err := r.Reload(); ok || err == nil || !strings.Contains(err.Error(), "b.yaml") {
		t.Fatalf("bad file: %v %v", ok, err)
	}
	feed(2) // the old rule keeps running, with its window: revoke at 5
	if got := strings.Join(sink.lines(), "\n"); got != "rv enforce alert k\nrv enforce revoke k" {
		t.Fatalf("after refused reload: %s", got)
	}
	// Unchanged files are not reloaded.
	if ok, _ := r.Reload(); ok {
		t.Error("reloaded without a change")
	}
	// Fixing the file loads both; rv keeps its window state (same version).
	writeFile(t, filepath.Join(dir, "b.yaml"), strings.Replace(fmt.Sprintf(revokeRule, "dry_run", "10m"), "id: rv", "id: other", 1))
	if ok, err := r.Reload(); !ok || err != nil {
		t.Fatalf("fixed: %v %v", ok, err)
	}
	feed(1)
	if n := e.RuleSet().Len(); n != 2 {
		t.Fatalf("rules in force: %d", n)
	}
	e.Flush()
	for _, st := range e.Stats().Rules {
		if st.ID == "rv" && st.Matches != 6 {
			t.Errorf("rv lost its state across the reload: %+v", st)
		}
	}
}

// TestNativeMatchesCEL checks the native closures against the CEL
// interpreter on random events and windows.
func TestNativeMatchesCEL(t *testing.T) {
	exprs := []struct {
		src string
		agg bool
	}{
		{`outcome == "valid"`, false},
		{`outcome in ["malformed", "unknown"] && asn != 0`, false},
		{`key_id != "" && (country == "US" || country != "DE") && !(status >= 500)`, false},
		{`route.startsWith("/v1/") && user_agent.contains("curl") || host.endsWith(".com")`, false},
		{`net24(ip) == "192.0.2.0/24"`, false},
		{`in_cidr(ip, "192.0.2.0/25")`, false},
		{`asn in [64500, 64501] && bytes_out > 1000 && cost_units <= 3`, false},
		{`status > 399 ? country == "US" : method == "GET"`, false},
		{`double(latency_us) / 1000.0 > 2.5`, false},
		{`count >= 3 && distinct.ip >= 2`, true},
		{`count >= 10.0 * baseline && rate > 0.05`, true},
		{`sum.bytes_out > 5000 || window_seconds < 100 && group != ""`, true},
		{`-baseline < 1.5 && count > 2.5`, true},
	}
	c, err := newCompiler(0)
	if err != nil {
		t.Fatal(err)
	}
	ff := featureFields{distinct: []string{"ip"}, sums: []string{"bytes_out"}, baseline: true}
	r := &compiledRule{window: int64(time.Minute), bucketW: int64(time.Minute / nBuckets), distinctCap: 16,
		distinct: []*eventField{eventFieldByName["ip"]}, sums: []*eventField{eventFieldByName["bytes_out"]},
		baseline: &BaselineSpec{Default: 1}, alpha: 0.5}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	for _, x := range exprs {
		want := kBool
		p, err := c.compile(x.src, x.agg, want, ff)
		if err != nil {
			t.Fatalf("%s: %v", x.src, err)
		}
		if !p.hasNat {
			t.Errorf("%s: not planned natively", x.src)
			continue
		}
		for i := 0; i < 2000; i++ {
			e := event.Event{ID: "x", Time: t0.Add(time.Duration(i) * time.Second), KeyID: pick("", "k1", "k2"),
				Outcome: event.Outcome(rng.IntN(14)), ClientIP: pick("192.0.2.1", "192.0.2.200", "198.51.100.7", "2001:db8::1", "junk"),
				Country: pick("US", "DE", ""), ASN: uint32(pick2(rng, 0, 64500, 64501)), Method: pick("GET", "POST"),
				Host: pick("a.com", "b.org"), Route: pick("/v1/x", "/v2/y"), Status: uint16(pick2(rng, 200, 404, 503)),
				LatencyUS: uint32(rng.IntN(5000)), BytesOut: uint64(rng.IntN(3000)), UserAgent: pick("curl/8", "go"),
				CostUnits: uint32(rng.IntN(5))}
			pool := &extPool{}
			g := &group{used: true, baseline: float64(rng.IntN(4)) / 2, ext: pool.put(&groupExt{sums: make([]int64, nBuckets), distinct: make([][]distinctEntry, 1)})}
			for k := rng.IntN(20); k > 0; k-- {
				g.add(r, pool, e.Time.UnixNano()-int64(rng.IntN(30))*1e9, []uint64{uint64(rng.IntN(4))}, []int64{int64(rng.IntN(1000))})
			}
			v := &aggView{r: r, g: g, p: pool, now: e.Time.UnixNano(), key: pick("", "g")}
			a := &activation{ev: &e}
			if x.agg {
				a.agg = v
			}
			nat := p.native.b(a)
			out, _, err := p.prg.Eval(a)
			if err != nil {
				t.Fatalf("%s: CEL error %v", x.src, err)
			}
			if bool(out.(types.Bool)) != nat {
				t.Fatalf("%s: native %v, CEL %v on %+v", x.src, nat, out, e)
			}
		}
	}
}

func pick2(rng *rand.Rand, xs ...int) int { return xs[rng.IntN(len(xs))] }

func TestInterpretedFallback(t *testing.T) {
	// Integer arithmetic is not planned natively (CEL reports overflow as an
	// error); the rule still works through the interpreter.
	src := strings.Replace(fmt.Sprintf(revokeRule, "enforce", "10m"), "when: count >= 3", "when: count * 2 >= 6 && time.getHours() >= 0", 1)
	set := mustSet(t, src)
	if interp := set.Native()["rv"]; len(interp) != 1 || interp[0] != "actions[0].when" {
		t.Fatalf("interpreted: %v", interp)
	}
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, set)
	for i := 0; i < 3; i++ {
		x := ev(i, time.Duration(i)*time.Second, "k", "192.0.2.1", event.OutcomeValid)
		e.Process(&x)
	}
	if len(sink.ds) != 1 {
		t.Fatalf("decisions: %v", sink.lines())
	}
}

func TestGroupSize(t *testing.T) {
	if n := unsafe.Sizeof(group{}); n != 128 {
		t.Errorf("group is %d bytes; keep it at 128 (2 cache lines)", n)
	}
}

// TestParallelMatchesSerial checks that splitting the rules over engines
// changes nothing in the decisions.
func TestParallelMatchesSerial(t *testing.T) {
	set, err := LoadPaths(CompileOptions{}, "../../rules")
	if err != nil {
		t.Fatal(err)
	}
	run := func(process func([]event.Event)) {
		s := NewSynth(2000, t0, 10*time.Millisecond, 7)
		batch := make([]event.Event, 1000)
		for i := 0; i < 50; i++ {
			s.Fill(batch)
			process(batch)
		}
	}
	serial := &capture{}
	e, _ := New(Config{Sink: serial}, set)
	run(e.ProcessBatch)
	par := &capture{}
	p, _ := NewParallel(Config{Sink: par}, set, 2)
	defer p.Close()
	run(p.ProcessBatch)
	a, b := serial.lines(), par.lines()
	sortStrings(a)
	sortStrings(b)
	if len(a) == 0 || strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Fatalf("serial %d decisions, parallel %d", len(a), len(b))
	}
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// TestManyGroupsAcrossChunks grows a table over several chunks, evicts at
// the cap and expires everything, checking the windows stay consistent.
func TestManyGroupsAcrossChunks(t *testing.T) {
	src := strings.Replace(fmt.Sprintf(revokeRule, "enforce", "1m"), "  window: 1m\n", "  window: 1m\n  max_groups: 3000\n", 1)
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, mustSet(t, src))
	for i := 0; i < 15000; i++ {
		k := fmt.Sprintf("k%d", i%5000)
		x := ev(i, time.Duration(i)*time.Millisecond, k, "192.0.2.1", event.OutcomeValid)
		e.Process(&x)
	}
	e.Flush()
	st := e.Stats().Rules[0]
	if st.Groups != 3000 || st.Evictions == 0 {
		t.Fatalf("groups %d evictions %d", st.Groups, st.Evictions)
	}
	tb := e.tables[0]
	for ri, row := range tb.rows {
		if got, ok := tb.index.get(row.hash); !ok || int(got) != ri {
			t.Fatalf("row %d: index says %d %v", ri, got, ok)
		}
		if !tb.row(ri)[0].used {
			t.Fatalf("row %d unused", ri)
		}
	}
	for i := 0; i < 4000; i++ {
		x := ev(i, time.Hour+time.Duration(i)*time.Millisecond, "fresh", "192.0.2.1", event.OutcomeValid)
		e.Process(&x)
	}
	e.Flush()
	if st := e.Stats().Rules[0]; st.Groups != 1 || len(tb.chunks) != 1 {
		t.Errorf("after expiry: groups %d chunks %d", st.Groups, len(tb.chunks))
	}
}

// TestWideCounts pushes one sub-window past uint16.
func TestWideCounts(t *testing.T) {
	src := strings.Replace(strings.Replace(fmt.Sprintf(revokeRule, "enforce", "10m"), "when: count >= 3", "when: count >= 70000", 1), "when: count >= 5", "when: count >= 70001", 1)
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, mustSet(t, src))
	for i := 0; i < 70000; i++ {
		x := ev(i, time.Duration(i)*time.Microsecond, "k", "192.0.2.1", event.OutcomeValid)
		e.Process(&x)
	}
	if got := strings.Join(sink.lines(), "\n"); got != "rv enforce alert k" {
		t.Fatalf("after 70000: %q", got)
	}
	x := ev(70000, time.Second, "k", "192.0.2.1", event.OutcomeValid)
	e.Process(&x)
	if len(sink.ds) != 2 || sink.ds[1].Figures["count"] != 70001 {
		t.Fatalf("decisions %v", sink.lines())
	}
}

func TestEventsWithoutTimeAreSkipped(t *testing.T) {
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, mustSet(t, fmt.Sprintf(revokeRule, "enforce", "10m")))
	for i := 0; i < 10; i++ {
		x := ev(i, 0, "k", "192.0.2.1", event.OutcomeValid)
		x.Time = time.Time{}
		if i%2 == 1 {
			x.Time = time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)
		}
		e.Process(&x)
	}
	e.Flush()
	if st := e.Stats(); st.BadTime != 10 || len(sink.ds) != 0 {
		t.Errorf("bad time %d, decisions %d", st.BadTime, len(sink.ds))
	}
}

// TestGroupsHoldNoPointers keeps the group chunks out of the garbage
// collector's scans.
func TestGroupsHoldNoPointers(t *testing.T) {
	if reflect.TypeFor[group]().Size() != 128 {
		t.Skip("size checked elsewhere")
	}
	var check func(reflect.Type) bool
	check = func(ty reflect.Type) bool {
		switch ty.Kind() {
		case reflect.Pointer, reflect.String, reflect.Slice, reflect.Map, reflect.Interface, reflect.Func, reflect.Chan, reflect.UnsafePointer:
			return false
		case reflect.Array:
			return check(ty.Elem())
		case reflect.Struct:
			for i := 0; i < ty.NumField(); i++ {
				if !check(ty.Field(i).Type) {
					return false
				}
			}
		}
		return true
	}
	if !check(reflect.TypeFor[group]()) {
		t.Error("group holds a pointer: its chunks would be scanned by the GC")
	}
}

// TestExtensionsFollowRows checks that extensions (spilled distinct sets)
// are released with their rows and survive row moves.
func TestExtensionsFollowRows(t *testing.T) {
	src := strings.Replace(fmt.Sprintf(revokeRule, "enforce", "1m"), "  window: 1m\n", "  window: 1m\n  max_groups: 50\n", 1)
	src = strings.Replace(src, "when: count >= 3", "when: distinct.ip >= 4", 1)
	src = strings.Replace(src, "when: count >= 5", "when: distinct.ip >= 100", 1)
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, mustSet(t, src))
	for i := 0; i < 2000; i++ {
		x := ev(i, time.Duration(i)*time.Millisecond, fmt.Sprintf("k%d", i%40), fmt.Sprintf("10.0.0.%d", i%7), event.OutcomeValid)
		e.Process(&x)
	}
	tb := e.tables[0]
	check := func(wantUsed int) {
		t.Helper()
		live := 0
		for _, x := range tb.exts.items {
			if x != nil {
				live++
			}
		}
		used := 0
		for ri := range tb.rows {
			if h := tb.row(ri)[0].ext; h != 0 {
				used++
				if tb.exts.get(h) == nil {
					t.Fatalf("row %d: dangling extension %d", ri, h)
				}
			}
		}
		if live != used || used != wantUsed {
			t.Errorf("%d live extensions, %d referenced, want %d", live, used, wantUsed)
		}
	}
	check(40)
	if len(sink.ds) != 40 {
		t.Errorf("%d alerts, want 40", len(sink.ds))
	}
	// An hour later the idle rows are swept and their extensions released.
	for i := 0; i < 200; i++ {
		x := ev(i, time.Hour+time.Duration(i)*time.Millisecond, "fresh", "10.0.0.1", event.OutcomeValid)
		e.Process(&x)
	}
	check(0)
	if len(tb.rows) != 1 {
		t.Errorf("rows %d", len(tb.rows))
	}
}

// TestBatchMatchesPerEvent checks the phased batch path against one event
// at a time, with a cap small enough that rows are evicted (and moved)
// inside sub-batches.
func TestBatchMatchesPerEvent(t *testing.T) {
	rules, err := ParsePaths("../../rules")
	if err != nil {
		t.Fatal(err)
	}
	for _, capGroups := range []int{0, 300} {
		set, err := Compile(rules, CompileOptions{MaxGroups: capGroups})
		if err != nil {
			t.Fatal(err)
		}
		run := func(batch bool) (*capture, Stats) {
			sink := &capture{}
			e, _ := New(Config{Sink: sink}, set)
			s := NewSynth(1000, t0, 20*time.Millisecond, 5)
			evs := make([]event.Event, 1000)
			for i := 0; i < 30; i++ {
				s.Fill(evs)
				if batch {
					e.ProcessBatch(evs)
				} else {
					for j := range evs {
						e.Process(&evs[j])
					}
				}
			}
			e.Flush()
			return sink, e.Stats()
		}
		a, sa := run(false)
		b, sb := run(true)
		la, lb := a.lines(), b.lines()
		sortStrings(la)
		sortStrings(lb)
		if len(la) == 0 || strings.Join(la, "\n") != strings.Join(lb, "\n") {
			t.Fatalf("cap %d: per event %d decisions, batch %d", capGroups, len(la), len(lb))
		}
		for i := range sa.Rules {
			x, y := sa.Rules[i], sb.Rules[i]
			if x.Matches != y.Matches || x.Groups != y.Groups || x.Evictions != y.Evictions || x.Expired != y.Expired {
				t.Errorf("cap %d, %s: per event %+v\nbatch %+v", capGroups, x.ID, x, y)
			}
		}
		var ev uint64
		for _, r := range sb.Rules {
			ev += r.Evictions
		}
		if capGroups > 0 && ev == 0 {
			t.Errorf("cap %d: no evictions, the test does not test them", capGroups)
		}
	}
}
