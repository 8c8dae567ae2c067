package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// TestPageTimes measures the server time of each page over a store of
// KEYMETER_CONSOLE_EVENTS events (a measurement, not a check: it runs only
// when the variable is set), e.g.
//
//	KEYMETER_CONSOLE_EVENTS=1000000 go test ./internal/console -run TestPageTimes -v
func TestPageTimes(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("KEYMETER_CONSOLE_EVENTS"))
	if n <= 0 {
		t.Skip("set KEYMETER_CONSOLE_EVENTS to measure")
	}
	e := setup(t)
	c := client(t, nil)
	login(t, c, e.url, adminSecret, "").Body.Close()
	ctx := context.Background()
	// 100 keys of one project, events over the last 24 hours.
	const nkeys = 100
	ids := make([]string, nkeys)
	for i := range ids {
		ids[i] = fmt.Sprintf("key_bench_%03d", i)
	}
	// One real key makes proj_bench a project the overview knows.
	req, _ := http.NewRequest("POST", e.url+"/v1/keys", strings.NewReader(`{"project":"proj_bench"}`))
	req.Header.Set("Authorization", "Bearer "+adminSecret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("create key: %v %v", resp.Status, err)
	}
	var created struct {
		Key struct {
			ID string `json:"id"`
		} `json:"key"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&created); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ids[7] = created.Key.ID // the key whose pages are timed
	start := time.Now().UTC().Add(-24 * time.Hour)
	step := 24 * time.Hour / time.Duration(n)
	outcomes := []event.Outcome{event.OutcomeValid, event.OutcomeValid, event.OutcomeValid, event.OutcomeRateLimited, event.OutcomeRevoked}
	for off := 0; off < n; off += 100_000 {
		batch := make([]event.Event, 0, 100_000)
		for i := off; i < min(n, off+100_000); i++ {
			batch = append(batch, event.Event{ID: fmt.Sprintf("b-%d", i), Time: start.Add(time.Duration(i) * step), Project: "proj_bench",
				KeyID: ids[i%nkeys], Outcome: outcomes[i%len(outcomes)], ClientIP: fmt.Sprintf("198.51.100.%d", i%250), Country: "DE",
				Method: "GET", Route: "/v1/items", Status: 200, CostUnits: 1})
		}
		if err := e.db.InsertEvents(ctx, fmt.Sprintf("bench-%d", off), batch); err != nil {
			t.Fatal(err)
		}
	}
	var decs []store.Decision
	for i := range 1000 {
		decs = append(decs, store.Decision{ID: fmt.Sprintf("bd-%d", i), Time: time.Now().UTC().Add(-time.Duration(i) * time.Minute), RuleID: "r",
			RuleVersion: 1, Mode: "enforce", Action: "alert", Project: "proj_bench", KeyID: ids[i%nkeys], Evidence: `{"n":1}`})
	}
	for i := range 100 {
		decs = append(decs, store.Decision{ID: fmt.Sprintf("leak/%s/%d", ids[i%nkeys], i), Time: time.Now().UTC().Add(-time.Duration(i) * time.Minute),
			RuleID: "leak-report", RuleVersion: 1, Mode: "enforce", Action: "revoke", Project: "proj_bench", KeyID: ids[i%nkeys], Reason: "leaked: reported by bench"})
	}
	if err := e.db.WriteDecisions(ctx, decs); err != nil {
		t.Fatal(err)
	}
	var audit []store.AuditEntry
	for i := range 1000 {
		audit = append(audit, store.AuditEntry{ID: fmt.Sprintf("au-%d", i), Time: time.Now().UTC().Add(-time.Duration(i) * time.Minute), Actor: "admin:0123abcd",
			Role: "admin", Action: "key.update", Target: ids[i%nkeys], Project: "proj_bench", Detail: `{"rate_limit_per_s":5}`})
	}
	if err := e.db.WriteAudit(ctx, audit); err != nil {
		t.Fatal(err)
	}
	pages := []string{"/console/", "/console/keys", "/console/keys/" + ids[7] + "?granularity=minute", "/console/keys/" + ids[7] + "?granularity=hour",
		"/console/logs?key=" + ids[7], "/console/logs?project=proj_bench", "/console/decisions", "/console/decisions/bd-5?key=" + ids[5],
		"/console/usage?project=proj_bench&granularity=hour", "/console/audit", "/console/leaks"}
	for _, p := range pages {
		var ds []time.Duration
		for range 5 {
			t0 := time.Now()
			resp, err := c.Get(e.url + p)
			if err != nil {
				t.Fatal(err)
			}
			body(t, resp)
			ds = append(ds, time.Since(t0))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: %d", p, resp.StatusCode)
			}
		}
		slices.Sort(ds)
		t.Logf("events=%d page=%s median_ms=%.1f max_ms=%.1f", n, p, float64(ds[2].Microseconds())/1000, float64(ds[4].Microseconds())/1000)
	}
}
