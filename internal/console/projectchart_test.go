package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"regexp"
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
