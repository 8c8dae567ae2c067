package detect

import (
	"fmt"
	"hash/maphash"
	"strings"
	"testing"
	"time"
	"unsafe"

	"cel.dev/cel-go/common/types"

	"github.com/keymeter/keymeter/internal/event"
)

func e0seed() maphash.Seed { return maphash.MakeSeed() }

func sizeofProfile() uintptr { return unsafe.Sizeof(profile{}) }

// obs runs one event through the profiles as the engine does.
func obs(ps *profiles, x *event.Event) *profile {
	t := x.Time.UnixNano()
	h := ps.subjectHash(x)
	var p *profile
	if j, ok := ps.index.get(h); ok {
		p = ps.at(j)
	}
	return ps.observe(x, t, h, p)
}

// TestProfileLearns: spread quantiles, novelty with first/last seen, the
// hour-of-day seasonality and maturity, learned from the events alone.
func TestProfileLearns(t *testing.T) {
	ps := newProfiles(ProfileConfig{}, e0seed())
	var p *profile
	// Two days of a key used from 3 addresses in DE, one ASN, 10 events a
	// minute, and at 02:00 each day a burst of 600 a minute for 20 minutes.
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	n := 0
	for m := 0; m < 2*24*60; m++ {
		at := start.Add(time.Duration(m) * time.Minute)
		k := 10
		if at.Hour() == 2 && at.Minute() < 20 {
			k = 600
		}
		for j := 0; j < k; j++ {
			x := event.Event{ID: "e", Time: at.Add(time.Duration(j) * 50 * time.Millisecond), KeyID: "k", Outcome: event.OutcomeValid,
				ClientIP: fmt.Sprintf("198.51.100.%d", j%3), Country: "DE", ASN: 3320}
			p = obs(ps, &x)
			n++
		}
	}
	now := uint32(start.Add(48*time.Hour).Unix()) + 60
	v := profView{p: p, ps: ps, now: now}
	if !v.mature() || !v.seasonal() {
		t.Fatalf("after two days: mature %v seasonal %v", v.mature(), v.seasonal())
	}
	if q := v.quantile(hIPs, 0.99); q < 2 || q > 4 { // an estimate: two of 256 bits may collide
		t.Errorf("ips_p99 = %v, want about 3", q)
	}
	if q := v.quantile(hCountries, 0.99); q != 1 {
		t.Errorf("countries_p99 = %v, want 1", q)
	}
	if !v.seenCountry("DE", 14) || v.seenCountry("RU", 14) || !v.seenASN(3320, 14) || v.seenASN(12389, 14) {
		t.Error("seen sets")
	}
	if !v.seenNet("198.51.100.77", 14) || !v.seenNet("198.51.100.0/24", 14) || v.seenNet("203.0.113.1", 14) {
		t.Error("seen networks")
	}
	// The burst hour is normal at 02:00, not at 14:00.
	at2 := profView{p: p, ps: ps, now: uint32(start.Add(50*time.Hour + 5*time.Minute).Unix())}
	at14 := profView{p: p, ps: ps, now: uint32(start.Add(62*time.Hour + 5*time.Minute).Unix())}
	if b := at2.hourBaseline(); b < 8000 {
		t.Errorf("02:00 baseline %v, want the burst (~12600)", b)
	}
	if b := at14.hourBaseline(); b > 800 {
		t.Errorf("14:00 baseline %v, want ~600", b)
	}
	// A new country is new for an hour, then known.
	x := event.Event{Time: start.Add(48*time.Hour + 2*time.Minute), KeyID: "k", Outcome: event.OutcomeValid, ClientIP: "203.0.113.5", Country: "RU", ASN: 12389}
	obs(ps, &x)
	if v := (profView{p: p, ps: ps, now: uint32(x.Time.Unix())}); v.seenCountry("RU", 14) || v.seenASN(12389, 14) {
		t.Error("a country first seen now counts as seen")
	}
	if v := (profView{p: p, ps: ps, now: uint32(x.Time.Unix()) + 3700}); !v.seenCountry("RU", 14) {
		t.Error("a country seen for an hour is still new")
	}
	// A young profile is not mature.
	y := event.Event{Time: x.Time, KeyID: "young", Outcome: event.OutcomeValid, ClientIP: "192.0.2.1", Country: "US"}
	yp := obs(ps, &y)
	if (profView{p: yp, ps: ps, now: uint32(y.Time.Unix()) + 3600}).mature() {
		t.Error("a one-hour-old profile is mature")
	}
}

// TestProfileCEL: rules read the profile natively and through CEL alike.
func TestProfileCEL(t *testing.T) {
	src := `id: p
version: 1
name: p
severity: low
mode: enforce
match: key_id != "" && !profile.seen_country(country, 14)
aggregate: {group_by: [key_id], window: 10m}
actions:
  - {type: alert, when: "profile.mature && count >= 3 && profile.ips_p99 <= 3.0 && key_kind == 'server'"}
  - {type: alert, when: "[profile.seen_asn(asn, 7)].exists(x, !x) && profile.mature && count >= 3 && profile.age_hours > 12.0"}
`
	set := mustSet(t, src)
	if nat := set.Native()["p"]; len(nat) != 1 || nat[0] != "actions[1].when" {
		t.Fatalf("native planning: interpreted %v", nat)
	}
	sink := &capture{}
	e, _ := New(Config{Sink: sink}, set)
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for m := 0; m < 20*60; m += 2 {
		x := event.Event{ID: "e", Time: start.Add(time.Duration(m) * time.Minute), KeyID: "k", Outcome: event.OutcomeValid, ClientIP: "198.51.100.1", Country: "DE", ASN: 3320}
		e.Process(&x)
	}
	if len(sink.ds) != 0 {
		t.Fatalf("usual use fired: %v", sink.lines())
	}
	for i := 0; i < 5; i++ {
		x := event.Event{ID: "n", Time: start.Add(20*time.Hour + time.Duration(i)*time.Minute), KeyID: "k", Outcome: event.OutcomeValid, ClientIP: "203.0.113.1", Country: "RU", ASN: 12389}
		e.Process(&x)
	}
	if got := strings.Join(sink.lines(), "\n"); got != "p enforce alert k\np enforce alert k" {
		t.Fatalf("novel country: %s", got)
	}
	if sink.ds[0].Figures["profile_mature"] != 1 || sink.ds[0].Figures["profile_ips_p99"] != 1 {
		t.Errorf("evidence: %v", sink.ds[0].Figures)
	}
}

func TestProfileLayout(t *testing.T) {
	if n := unsafe.Sizeof(profile{}); n%64 != 0 {
		t.Errorf("profile is %d bytes, want a multiple of 64", n)
	}
	if o := unsafe.Offsetof(profile{}.winCty); o != 64 {
		t.Errorf("bitmaps at %d, want 64", o)
	}
}

// TestProfileNativeMatchesCEL: profile fields and functions give the same
// answers planned natively and through the CEL interpreter.
func TestProfileNativeMatchesCEL(t *testing.T) {
	ps := newProfiles(ProfileConfig{Maturity: time.Hour}, e0seed())
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var p *profile
	for m := 0; m < 300; m++ {
		x := event.Event{Time: start.Add(time.Duration(m) * time.Minute), KeyID: "k", Outcome: event.OutcomeValid,
			ClientIP: fmt.Sprintf("198.51.100.%d", m%4), Country: "DE", ASN: 3320}
		p = obs(ps, &x)
	}
	c, err := newCompiler(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, country := range []string{"DE", "RU"} {
		x := event.Event{Time: start.Add(300 * time.Minute), KeyID: "k", Outcome: event.OutcomeValid, ClientIP: "198.51.100.1", Country: country, ASN: 3320}
		a := &activation{ev: &x, prof: profView{p: p, ps: ps, now: uint32(x.Time.Unix())}}
		for _, src := range []string{
			"profile.mature", "profile.seasonal", "profile.new", "profile.known", "profile.age_hours > 4.0",
			"profile.events == 300", "profile.ips_p99 >= 4.0", "profile.countries_p99 == 1.0", "profile.asns_p50 == 1.0",
			"profile.hour_baseline > 30.0", "profile.peak_hour > 30.0", "profile.peak_10m >= 9.0", "profile.mean_hour > 50.0",
			"profile.usual_minutes_ago < 2.0", "profile.seen_country(country, 14)", "profile.seen_asn(asn, 14)",
			"profile.seen_net(ip, 14)", "profile.seen_net('203.0.113.0/24', 14)", "profile.concurrent_minutes(country) == 0.0",
			"profile.run_minutes(country) == 0.0", "key_kind == 'server'",
		} {
			x, err := c.compile(src, false, kBool, featureFields{})
			if err != nil {
				t.Fatalf("%s: %v", src, err)
			}
			if !x.hasNat {
				t.Fatalf("%s: not planned natively", src)
			}
			v, _, err := x.prg.Eval(a)
			if err != nil {
				t.Fatalf("%s: CEL: %v", src, err)
			}
			if nat := x.native.b(a); types.Bool(nat) != v {
				t.Errorf("%s (country %s): native %v, CEL %v", src, country, nat, v)
			}
		}
	}
}

func TestProfileFieldTypes(t *testing.T) {
	c, err := newCompiler(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.compile("profile.age_hours", true, kBool, featureFields{}); err == nil || !strings.Contains(err.Error(), "want bool") {
		t.Errorf("a double field as a condition: %v", err)
	}
	if _, err := c.compile("profile.nope > 1.0", true, kBool, featureFields{}); err == nil || !strings.Contains(err.Error(), "profile.nope") {
		t.Errorf("unknown field: %v", err)
	}
	if _, err := c.compile("profile.mature", true, kBool, featureFields{}); err != nil {
		t.Errorf("a bool field as a condition: %v", err)
	}
}

// TestSeenSetOverflowTellsNewValues: a subject rotating through more
// values than the set holds (a regional key's many ASNs) still sees a value
// it never used as new, and its own pushed-out values as seen.
func TestSeenSetOverflowTellsNewValues(t *testing.T) {
	var s seenSet
	var gone goneFilter
	const grace = 3600
	t0 := uint32(1_700_000_000)
	vals := []uint32{64601, 64602, 64603, 64604, 64611, 64612, 64613, 64614, 64621, 64622, 64623, 64624}
	var now uint32
	for i := 0; i < 2000; i++ { // every 15 s for about 8 h: 9 values, then all 12
		now = t0 + uint32(i*15)
		n := 9
		if i >= 500 {
			n = len(vals)
		}
		s.add(vals[(i*7+i/n)%n], now, grace, &gone)
	}
	if s.over == 0 {
		t.Fatal("the set never overflowed: the test does not test the filter")
	}
	if s.seen(64631, now, 14, grace, &gone) {
		t.Error("a never-used value is seen")
	}
	// A value that keeps coming back as the set's newcomer may still look
	// new (the set makes room by dropping its newest entry), but most are
	// known: before the filter, none was new, so none could be told.
	seen := 0
	for _, v := range vals {
		if s.seen(v, now, 14, grace, &gone) {
			seen++
		}
	}
	if seen < nSeen {
		t.Errorf("%d of %d values in use for hours are seen, want at least %d", seen, len(vals), nSeen)
	}
}

// TestCrowdRatio: when every key runs at several times its usual volume
// (a holiday sale), crowd_ratio says so; one key's spike does not move it.
func TestCrowdRatio(t *testing.T) {
	ps := newProfiles(ProfileConfig{}, e0seed())
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	const keys = 30
	// rate(k, m) is key k's events in minute m.
	run := func(from, to int, rate func(k, m int) int) float64 {
		for m := from; m < to; m++ {
			for k := range keys {
				for i := range rate(k, m) {
					x := event.Event{Time: start.Add(time.Duration(m)*time.Minute + time.Duration(i)*time.Second), KeyID: fmt.Sprintf("k%d", k),
						Outcome: event.OutcomeValid, ClientIP: "198.51.100.7", Country: "DE", ASN: 3320}
					obs(ps, &x)
				}
			}
		}
		return ps.crowdRatio(uint32(start.Add(time.Duration(to) * time.Minute).Unix()))
	}
	if c := run(0, 25*60+5, func(k, m int) int { return 2 }); c != 1 {
		t.Errorf("usual traffic: crowd_ratio %.2f, want 1", c)
	}
	if c := run(25*60+5, 25*60+45, func(k, m int) int {
		if k == 3 {
			return 40
		}
		return 2
	}); c != 1 {
		t.Errorf("one key at 20x: crowd_ratio %.2f, want 1", c)
	}
	run(25*60+45, 26*60+5, func(k, m int) int { return 2 })
	if c := run(26*60+5, 26*60+45, func(k, m int) int { return 10 }); c < 3.5 || c > 7 {
		t.Errorf("every key at 5x: crowd_ratio %.2f, want about 5", c)
	}
}

// TestPeakLag: a spike's own 10-minute windows do not raise the busiest 10
// minutes that rules judge it by until it has lasted 20 minutes; steady
// growth is seen at once.
func TestPeakLag(t *testing.T) {
	ps := newProfiles(ProfileConfig{}, e0seed())
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var p *profile
	at := func(m int, perMin int) {
		for i := range perMin {
			x := event.Event{Time: start.Add(time.Duration(m)*time.Minute + time.Duration(i)*time.Second), KeyID: "k",
				Outcome: event.OutcomeValid, ClientIP: "198.51.100.7", Country: "DE", ASN: 3320}
			p = obs(ps, &x)
		}
	}
	peak := func(m int) float64 {
		return profView{p: p, ps: ps, now: uint32(start.Add(time.Duration(m) * time.Minute).Unix())}.peak10m()
	}
	for m := range 600 {
		at(m, 3)
	}
	if got := peak(600); got < 29 || got > 31 {
		t.Fatalf("steady 30 per 10 minutes: peak_10m %.1f", got)
	}
	for m := 600; m < 612; m++ { // a spike: 10x, its first window closes at 610
		at(m, 30)
	}
	if got := peak(612); got > 33 {
		t.Errorf("2 minutes after the spike's first window closed: peak_10m %.1f, want the peak from before (30)", got)
	}
	for m := 612; m < 650; m++ {
		at(m, 30)
	}
	if got := peak(650); got < 290 {
		t.Errorf("after 50 minutes at 300 per 10 minutes: peak_10m %.1f, want about 300", got)
	}
}
