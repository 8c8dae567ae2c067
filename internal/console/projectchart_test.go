package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

var chartRE = regexp.MustCompile(`data-chart="([^"]+)"`)

// TestProjectUsageChart: the usage page's chart of a project sums every
// key's requests by outcome, at each granularity, as the API's usage does.
func TestProjectUsageChart(t *testing.T) {
	e := setup(t)
	e.apiCall("POST", "/v1/keys", adminSecret, map[string]any{"project": "proj_chart"}, 201)
	now := time.Now().UTC().Add(-10 * time.Minute)
	var evs []event.Event
	for i := range 30 {
		o := event.OutcomeValid
		if i%3 == 0 {
			o = event.OutcomeRateLimited
		}
		evs = append(evs, event.Event{ID: fmt.Sprintf("pc-%d", i), Time: now.Add(time.Duration(i) * 10 * time.Second), Project: "proj_chart",
			KeyID: fmt.Sprintf("key_pc_%d", i%4), Outcome: o, ClientIP: "192.0.2.1", Method: "GET", Route: "/", Status: 200, CostUnits: 1})
	}
	// Another project's events are not counted.
	evs = append(evs, event.Event{ID: "pc-other", Time: now, Project: "proj_else", KeyID: "key_else", Outcome: event.OutcomeValid, ClientIP: "192.0.2.1"})
	if err := e.db.InsertEvents(context.Background(), "pc", evs); err != nil {
		t.Fatal(err)
	}
	c := client(t, nil)
	login(t, c, e.url, adminSecret, "").Body.Close()
	for _, g := range []string{"minute", "hour", "day"} {
		resp, err := c.Get(e.url + "/console/usage?project=proj_chart&granularity=" + g)
		if err != nil {
			t.Fatal(err)
		}
		m := chartRE.FindStringSubmatch(body(t, resp))
		if m == nil {
			t.Fatalf("%s: no chart", g)
		}
		var ch struct {
			Series []struct {
				Name   string    `json:"name"`
				Values []float64 `json:"values"`
			} `json:"series"`
		}
		if err := json.Unmarshal([]byte(html.UnescapeString(m[1])), &ch); err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, s := range ch.Series {
			for _, v := range s.Values {
				got[s.Name] += v
			}
		}
		if got["valid"] != 20 || got["rate_limited"] != 10 || len(got) != 2 {
			t.Fatalf("%s chart: %v, want valid 20, rate_limited 10", g, got)
		}
	}
}

// TestOverviewKeyCounts: the overview counts keys by status from the key
// table, and the usage page offers every project.
func TestOverviewKeyCounts(t *testing.T) {
	e := setup(t)
	var ids []string
	for _, p := range []string{"proj_a", "proj_a", "proj_b"} {
		k := e.apiCall("POST", "/v1/keys", adminSecret, map[string]any{"project": p}, 201)
		ids = append(ids, k["key"].(map[string]any)["id"].(string))
	}
	e.apiCall("POST", "/v1/keys/"+ids[0]+"/revoke", adminSecret, map[string]any{"reason": "test"}, 200)
	c := client(t, nil)
	login(t, c, e.url, adminSecret, "").Body.Close()
	cards := regexp.MustCompile(`<h2>Keys</h2><p class="big">(\d+)</p>\s*<dl class="kv">(.*?)</dl>`)
	for end := time.Now().Add(30 * time.Second); ; { // bounds a failing test only
		resp, err := c.Get(e.url + "/console/")
		if err != nil {
			t.Fatal(err)
		}
		m := cards.FindStringSubmatch(body(t, resp))
		if m != nil && m[1] == "3" && m[2] == "<dt>active</dt><dd>2</dd><dt>revoked</dt><dd>1</dd>" {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("overview key counts: %q", m)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := c.Get(e.url + "/console/usage?project=proj_a")
	if err != nil {
		t.Fatal(err)
	}
	b := body(t, resp)
	// The project's keys by quota used (all 0 here: by id), not another's.
	for i, id := range ids {
		if in := strings.Contains(b, `href="/console/keys/`+id+`"`); in != (i < 2) {
			t.Fatalf("usage of proj_a: key %d (%s) listed %v", i, id, in)
		}
	}
	for _, p := range []string{`>proj_a</option>`, `>proj_b</option>`} {
		if !regexp.MustCompile(regexp.QuoteMeta(p)).MatchString(b) {
			t.Fatalf("usage page lacks project %s", p)
		}
	}
}
