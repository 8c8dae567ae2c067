package loadgen

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

var errEnough = errors.New("enough")

// genSmall generates a 6-hour set, or its first limit events (limit > 0).
func genSmall(t *testing.T, seed uint64, limit int) (*EvalSet, [32]byte, []event.Event) {
	t.Helper()
	h := sha256.New()
	var evs []event.Event
	var buf []byte
	ev, err := NewEval(EvalConfig{Start: time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC), Seed: seed, Duration: 6 * time.Hour, Scale: 0.1, AttackAfter: 90 * time.Minute, Attacks: 1})
	if err != nil {
		t.Fatal(err)
	}
	err = ev.Run(func(e *event.Event) error {
		buf = e.AppendJSON(buf[:0])
		h.Write(buf)
		evs = append(evs, *e)
		if len(evs) == limit {
			return errEnough
		}
		return nil
	})
	if err != nil && err != errEnough {
		t.Fatal(err)
	}
	set := &ev.EvalSet
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return set, sum, evs
}

func TestEvalSetReproducibleAndVaried(t *testing.T) {
	a, _, evs := genSmall(t, 7, 0)
	_, ha, _ := genSmall(t, 7, 50000)
	b, hb, _ := genSmall(t, 7, 50000)
	if ha != hb || fmt.Sprint(a.Labels) != fmt.Sprint(b.Labels) {
		t.Fatal("same seed gave a different set")
	}
	c, hc, _ := genSmall(t, 8, 50000)
	if hc == ha {
		t.Fatal("another seed gave the same set")
	}
	same := 0
	for i := range min(len(a.Keys), len(c.Keys)) {
		if a.Keys[i].KeyID == c.Keys[i].KeyID {
			same++
		}
	}
	if same > 0 {
		t.Fatalf("%d key ids repeat across seeds", same)
	}
	// Every attack scenario has a label, inside the attack period.
	scen := map[string]bool{}
	for _, l := range a.Labels {
		scen[l.Scenario] = true
		if l.Start.Before(time.Date(2026, 11, 23, 1, 30, 0, 0, time.UTC)) || !l.End.After(l.Start) {
			t.Errorf("label %s: window %s..%s", l.ID, l.Start, l.End)
		}
	}
	for _, s := range EvalScenarios {
		if !scen[s] {
			t.Errorf("no label for scenario %s", s)
		}
	}
	// Time order, valid events, and country/ASN consistent with the address.
	for i := range evs {
		e := &evs[i]
		if i > 0 && e.Time.Before(evs[i-1].Time) {
			t.Fatalf("event %d out of time order", i)
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if c, asn := Lookup(e.ClientIP); c != e.Country || asn != e.ASN {
			t.Fatalf("event %d: %s is %s/AS%d in the world, event says %s/AS%d", i, e.ClientIP, c, asn, e.Country, e.ASN)
		}
	}
	// Attack events fall in their label's group and window.
	for _, l := range a.Labels {
		n := 0
		p, perr := netip.ParsePrefix(l.Group)
		isNet := perr == nil
		for i := range evs {
			e := &evs[i]
			if e.Time.Before(l.Start) || e.Time.After(l.End) {
				continue
			}
			if isNet && e.KeyID == "" && p.Contains(netip.MustParseAddr(e.ClientIP)) || !isNet && e.KeyID == l.Group {
				n++
			}
		}
		if n == 0 {
			t.Errorf("label %s: no events in its group and window", l.ID)
		}
	}
	// Without --start, the start is drawn from the seed.
	s7, s8 := EvalConfig{Seed: 7}, EvalConfig{Seed: 8}
	_ = s7.fill()
	_ = s8.fill()
	if s7.Start.Equal(s8.Start) || s7.Start.Month() != time.November {
		t.Errorf("default starts: seed 7 %s, seed 8 %s", s7.Start, s8.Start)
	}
	kinds := map[string]int{}
	for _, k := range a.Keys {
		kinds[k.Persona]++
	}
	for _, p := range []string{"mobile-sdk", "browser", "regional-web", "server", "nightly-batch", "ci-runner", "uptime-probe", "travelling-developer", "corporate-nat",
		"edge-functions", "sase-egress", "regional-web-visitors", "region-migration", "rotated-old-key", "rotated-new-key", "new-key-onboarding",
		"partner-platform", "stale-revoked-cron", "team-key-traveller", "load-tested-server", "batch-dst-rerun", "ipv6-mobile"} {
		alt := map[string]string{"browser": "browser-cdn", "edge-functions": "edge-deploy", "sase-egress": "sase-rollout"}[p]
		if kinds[p] == 0 && (alt == "" || kinds[alt] == 0) {
			t.Errorf("no %s keys (%v)", p, kinds)
		}
	}
	t.Log(fmt.Sprint(len(evs), " events ", kinds))
}

func TestAppendJSONMatchesMarshal(t *testing.T) {
	e := event.Event{ID: "a\"<b>\u2028", Time: time.Unix(1764000000, 5).UTC(), KeyID: "key_x", Project: "p", Outcome: event.OutcomeValid,
		ClientIP: "1.2.3.4", Country: "US", ASN: 7, Route: "/v1/\x01é\xff", Status: 200, BytesOut: 9, CostUnits: 1}
	want, err := e.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if got := e.AppendJSON(nil); string(got) != string(want) {
		t.Fatalf("AppendJSON\n got %s\nwant %s", got, want)
	}
}
