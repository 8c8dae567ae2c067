package detect

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

const spreadRule = `id: spread
version: 1
name: many addresses
severity: high
mode: enforce
match: key_id != "" && outcome == "valid"
aggregate:
  group_by: [key_id]
  window: 10m
  distinct: [ip]
suppress: 30m
actions:
  - type: alert
    when: distinct.ip >= 5
  - type: suspend
    when: distinct.ip >= 10
---
id: novel
version: 1
name: new country
severity: low
mode: enforce
match: key_id != "" && country == "RU"
aggregate:
  group_by: [key_id]
  window: 10m
actions:
  - type: alert
    when: count >= 1
`

// TestCorroboration: a suspend waits, as one alert, for a second rule's
// signal on the same key; then it goes ahead and says what corroborated it.
func TestCorroboration(t *testing.T) {
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, mustSet(t, spreadRule))
	for i := 0; i < 30; i++ {
		x := ev(i, time.Duration(i)*time.Second, "k", fmt.Sprintf("198.51.100.%d", i), event.OutcomeValid)
		e.Process(&x)
	}
	want := "spread enforce alert k\nspread enforce alert k" // the alert, then the held suspend
	if got := strings.Join(sink.lines(), "\n"); got != want {
		t.Fatalf("uncorroborated:\n%s\nwant\n%s", got, want)
	}
	if !strings.Contains(sink.ds[1].Reason, "suspend held") {
		t.Errorf("held reason: %q", sink.ds[1].Reason)
	}
	x := ev(100, 40*time.Second, "k", "203.0.113.9", event.OutcomeValid)
	x.Country = "RU"
	e.Process(&x)
	for i := 0; i < 70; i++ { // the held action is looked at again within a minute
		x := ev(200+i, 41*time.Second+time.Duration(i)*time.Second, "k", fmt.Sprintf("198.51.100.%d", i), event.OutcomeValid)
		e.Process(&x)
	}
	lines := sink.lines()
	if got := strings.Join(lines[2:], "\n"); got != "novel enforce alert k\nspread enforce suspend k" {
		t.Fatalf("corroborated:\n%s", got)
	}
	d := sink.ds[3]
	if !strings.Contains(d.Reason, "corroborated by novel") || !strings.Contains(d.Reason, "escalated from alert") || d.DurationMs != (24*time.Hour).Milliseconds() {
		t.Errorf("suspend: reason %q duration %d", d.Reason, d.DurationMs)
	}
	// An outside signal (a leak report) corroborates too.
	sink.ds = nil
	e.Corroborate("k2", "leak-report")
	for i := 0; i < 12; i++ {
		x := ev(300+i, 2*time.Minute+time.Duration(i)*time.Second, "k2", fmt.Sprintf("198.51.100.%d", i), event.OutcomeValid)
		e.Process(&x)
	}
	if got := strings.Join(sink.lines(), "\n"); got != "spread enforce alert k2\nspread enforce suspend k2" {
		t.Fatalf("leak report:\n%s", got)
	}
}

// TestSuppressionPerAction: each action has its own suppression period,
// starting when it fires: the alert repeats every minute while the block
// (5 minutes) fires once, not again when the alert's period restarts.
func TestSuppressionPerAction(t *testing.T) {
	src := `id: s
version: 1
name: s
severity: low
mode: enforce
match: outcome == "unknown"
aggregate: {group_by: [ip], window: 1m}
actions:
  - {type: alert, when: count >= 3}
  - {type: block_ip, when: count >= 10, duration: 5m}
`
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, mustSet(t, src))
	for i := 0; i < 30; i++ {
		x := ev(i, time.Duration(i)*5*time.Second, "", "192.0.2.4", event.OutcomeUnknown)
		e.Process(&x)
	}
	want := "s enforce alert 192.0.2.4\ns enforce block_ip 192.0.2.4\ns enforce alert 192.0.2.4\ns enforce alert 192.0.2.4"
	if got := strings.Join(sink.lines(), "\n"); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

// TestBlockNetwork: a rule grouped by net24(ip) blocks the network.
func TestBlockNetwork(t *testing.T) {
	src := `id: flood
version: 1
name: flood
severity: low
mode: enforce
match: outcome == "missing"
aggregate: {group_by: [net24(ip)], window: 1m}
actions:
  - {type: block_ip, when: count >= 10, duration: 5m}
`
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, mustSet(t, src))
	for i := 0; i < 20; i++ {
		x := ev(i, time.Duration(i)*time.Second, "", fmt.Sprintf("203.0.113.%d", i), event.OutcomeMissing)
		e.Process(&x)
	}
	if len(sink.ds) != 1 || sink.ds[0].ClientIp != "203.0.113.0/24" {
		t.Fatalf("decisions: %v", sink.lines())
	}
}

// TestBlockASN: a rule grouped by asn blocks the ASN (client_ip AS<n>),
// not the address of the request that crossed the threshold; the group
// (the evidence) stays the AS number. A rule grouped by an expression
// over asn (or by asn with another field) blocks the address as before.
func TestBlockASN(t *testing.T) {
	for _, c := range []struct{ groupBy, want string }{
		{"[asn]", "AS64500"},
		{"[asn, country]", "203.0.113.19"},
	} {
		src := `id: pool
version: 1
name: pool
severity: low
mode: enforce
match: outcome == "unknown"
aggregate: {group_by: ` + c.groupBy + `, window: 1m, distinct: [ip]}
actions:
  - {type: block_ip, when: count >= 20 && distinct.ip >= 10, duration: 5m}
`
		sink := &capture{}
		e, _ := New(Config{Sink: sink}, mustSet(t, src))
		for i := 0; i < 30; i++ {
			x := ev(i, time.Duration(i)*time.Second, "", fmt.Sprintf("203.0.113.%d", i), event.OutcomeUnknown)
			e.Process(&x)
		}
		if len(sink.ds) != 1 {
			t.Fatalf("group_by %s: decisions: %v", c.groupBy, sink.lines())
		}
		d := sink.ds[0]
		if d.ClientIp != c.want || !strings.HasPrefix(d.Group, "64500") {
			t.Errorf("group_by %s: client_ip %q group %q, want client_ip %q", c.groupBy, d.ClientIp, d.Group, c.want)
		}
	}
}

// TestBreakerDistinctKeysRearmsAndGlobal: the breaker counts distinct keys
// (the same key again is not another), re-arms by itself once its window
// has passed, and a global budget bounds all rules together.
func TestBreakerDistinctKeysRearmsAndGlobal(t *testing.T) {
	two := fmt.Sprintf(revokeRule, "enforce", "2m") + "---\n" + strings.Replace(fmt.Sprintf(revokeRule, "enforce", "2m"), "id: rv", "id: rv2", 1)
	sink := &capture{}
	e, _ := New(Config{Sink: sink, MaxRevocationsPerHour: 2, MaxRevocationsGlobal: 3}, mustSet(t, two))
	run := func(key string, base time.Duration) {
		for i := 0; i < 5; i++ {
			x := ev(i, base+time.Duration(i)*time.Second, key, "192.0.2.1", event.OutcomeValid)
			e.Process(&x)
		}
	}
	count := func(mode, action string) (n int) {
		for _, l := range sink.lines() {
			if strings.Contains(l, " "+mode+" "+action+" ") {
				n++
			}
		}
		return
	}
	run("k0", 0)
	run("k0", 5*time.Minute) // both rules revoke k0 again: still one key each
	run("k1", 10*time.Minute)
	if n := count("enforce", "revoke"); n != 6 {
		t.Fatalf("revocations of 2 distinct keys by 2 rules: %d enforced\n%s", n, strings.Join(sink.lines(), "\n"))
	}
	sink.ds = nil
	run("k2", 15*time.Minute) // rule budgets (2) reached: both rules trip
	if count("enforce", "revoke") != 0 || count("dry_run", "revoke") != 2 {
		t.Fatalf("over the rule budget:\n%s", strings.Join(sink.lines(), "\n"))
	}
	sink.ds = nil
	run("k3", 80*time.Minute) // the window has passed: re-armed
	if count("enforce", "revoke") != 2 {
		t.Fatalf("after the window:\n%s", strings.Join(sink.lines(), "\n"))
	}
	sink.ds = nil
	run("k4", 81*time.Minute) // global budget: k3 and k4 would be 2 keys; within rule budgets
	run("k5", 82*time.Minute) // ... k5 makes 3 keys within the hour for each rule and globally
	var global int
	for _, d := range sink.ds {
		if strings.HasPrefix(d.Group, "all rules") {
			global++
		}
	}
	if count("dry_run", "revoke") == 0 {
		t.Fatalf("budgets not applied:\n%s", strings.Join(sink.lines(), "\n"))
	}
	_ = global
}

// TestProfileMemory measures a profile's memory: the target is at
// most 1 KB per profiled key, map entry included.
func TestProfileMemory(t *testing.T) {
	const n = 20000
	ps := newProfiles(ProfileConfig{}, e0seed())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i++ {
		x := ev(i, time.Duration(i)*time.Millisecond, fmt.Sprintf("key_%08d", i), "192.0.2.1", event.OutcomeValid)
		obs(ps, &x)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("profile memory: %.0f bytes per profiled key (struct %d bytes)", per, sizeofProfile())
	if per > 1024 {
		t.Errorf("%.0f bytes per profiled key, want at most 1024", per)
	}
	runtime.KeepAlive(ps)
}
