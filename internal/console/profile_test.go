package console_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// TestKeyProfile: a key's page shows its behaviour over the last week
// from its stored events: countries and ASNs by volume, addresses and
// networks, requests per active minute, hours of day, and maturity.
func TestKeyProfile(t *testing.T) {
	e := setup(t)
	created := e.apiCall("POST", "/v1/keys", adminSecret, map[string]any{"project": "proj_prof"}, 201)
	id := created["key"].(map[string]any)["id"].(string)
	now := time.Now().UTC()
	day := now.Add(-20 * time.Hour).Truncate(time.Hour)
	var evs []event.Event
	add := func(at time.Time, n int, ip, country string, asn uint32) {
		for i := range n {
			evs = append(evs, event.Event{ID: fmt.Sprintf("prof-%d", len(evs)), Time: at.Add(time.Duration(i) * time.Second), Project: "proj_prof", KeyID: id,
				Outcome: event.OutcomeValid, ClientIP: ip, Country: country, ASN: asn, Method: "GET", Route: "/", Status: 200})
		}
	}
	add(day, 30, "198.51.100.1", "DE", 3320)                    // 30 in one minute
	add(day.Add(time.Hour), 10, "198.51.100.2", "DE", 3320)     // same /24
	add(day.Add(2*time.Hour), 5, "203.0.113.9", "FR", 5410)     // another network
	add(day.Add(3*time.Hour), 5, "2001:db8:1:2::7", "NL", 1136) // an IPv6 /48
	// Another key's events are not counted.
	evs = append(evs, event.Event{ID: "prof-other", Time: day, Project: "proj_prof", KeyID: "key_other", Outcome: event.OutcomeValid, ClientIP: "192.0.2.1", Country: "US"})
	if err := e.db.InsertEvents(context.Background(), "prof", evs); err != nil {
		t.Fatal(err)
	}
	c := client(t, nil)
	login(t, c, e.url, adminSecret, "").Body.Close()
	resp, err := c.Get(e.url + "/console/keys/" + id)
	if err != nil {
		t.Fatal(err)
	}
	b := body(t, resp)
	i := strings.Index(b, `id="key-profile"`)
	if resp.StatusCode != 200 || i < 0 {
		t.Fatalf("key page: %d, profile section %v", resp.StatusCode, i >= 0)
	}
	prof := b[i:]
	prof = prof[:strings.Index(prof, "</section>")]
	text := regexp.MustCompile(`<[^>]+>`).ReplaceAllString(prof, "")
	for _, want := range []string{"Requests50", "median 10, mean 12.5, p99 30, peak 30 (4 active minutes)", "4 in 3 networks", "DE 40, FR 5, NL 5", "AS3320 40, AS1136 5, AS5410 5",
		"Mature: rules", fmt.Sprintf("%d:00 UTC: 30 requests", day.Hour())} {
		if !strings.Contains(text, want) {
			t.Errorf("profile lacks %q:\n%s", want, text)
		}
	}
}
