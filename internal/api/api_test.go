package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/billing"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/leaks"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

const adminSecret, readSecret = "adm-secret-token", "read-secret-token"

type sinkFunc func(context.Context, []event.Event) error

func (f sinkFunc) Accept(ctx context.Context, evs []event.Event) error { return f(ctx, evs) }

type env struct {
	t      *testing.T
	url    string
	router routers.Router
}

var (
	chdbOnce sync.Once
	chdbPath string
)

// chdbDir is this test process's embedded store directory (one per process).
func chdbDir(t *testing.T) string {
	chdbOnce.Do(func() {
		d, err := os.MkdirTemp("", "keymeter-api-test-chdb-")
		if err != nil {
			t.Fatal(err)
		}
		chdbPath = d
	})
	return chdbPath
}

func setup(t *testing.T) *env {
	t.Helper()
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 2})
	table, svc := natstest.Keys(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	db, err := chdb.Open(chdb.Config{DataDir: chdbDir(t), Database: fmt.Sprintf("api_%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatalf("open chdb (CHDB_LIB_PATH=%q): %v", os.Getenv("CHDB_LIB_PATH"), err)
	}
	t.Cleanup(func() { _ = db.Close(context.Background()) })
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Add(-time.Hour)
	var evs []event.Event
	for i := range 30 {
		evs = append(evs, event.Event{ID: fmt.Sprintf("e%d", i), Time: now.Add(time.Duration(i) * time.Second), Project: "proj_api",
			KeyID: "key_api", Outcome: event.OutcomeValid, ClientIP: "203.0.113.5", Country: "DE", Route: "/v1/x", Status: 200, CostUnits: 1})
	}
	// An event with an unknown (empty) client address, as POST /v1/events accepts it.
	evs = append(evs, event.Event{ID: "e-noip", Time: now.Add(40 * time.Second), Project: "proj_api", KeyID: "key_api",
		Outcome: event.OutcomeValid, Country: "DE", Route: "/v1/x", Status: 200, CostUnits: 1})
	if err := db.InsertEvents(ctx, "api-test", evs); err != nil {
		t.Fatal(err)
	}
	var decs []store.Decision
	for i := range 5 {
		decs = append(decs, store.Decision{ID: fmt.Sprintf("dec-%d", i), Time: now.Add(time.Duration(i) * time.Second), RuleID: "r",
			RuleVersion: 1, Mode: "enforce", Action: "alert", KeyID: "key_api", GroupKey: "key_api", Evidence: `{"figures":{"count":3}}`})
	}
	if err := db.WriteDecisions(ctx, decs); err != nil {
		t.Fatal(err)
	}
	adm, _ := api.ParseToken("admin:" + api.HashToken(adminSecret))
	rd, _ := api.ParseToken("read:" + api.HashToken(readSecret))
	set, err := detect.LoadPaths(detect.CompileOptions{}, "../../rules")
	if err != nil {
		t.Fatal(err)
	}
	eng, err := detect.New(detect.Config{Sink: detect.SinkFunc(func(*keymeterv1.Decision) {})}, set)
	if err != nil {
		t.Fatal(err)
	}
	eng.ProcessBatch(evs)
	if err := detector.FollowRuleModes(ctx, b, eng, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	lh, err := leaks.New(leaks.Config{Table: table, Keys: svc})
	if err != nil {
		t.Fatal(err)
	}
	s, err := api.New(api.Config{Tokens: []api.Token{adm, rd}, Keys: svc, KeyTable: table, Usage: db, Logs: db, Decision: db,
		Billing: &billing.Exporter{Store: db}, Rules: eng, RuleModes: detector.ModeSwitch{Bus: b, Known: eng.HasRule}, Leaks: lh, Ready: table.Loaded, Retention: db.Retention, Audit: db,
		Events: sinkFunc(func(context.Context, []event.Event) error { return nil })})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)

	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile("../../schemas/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc.Servers = openapi3.Servers{{URL: hs.URL}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, url: hs.URL, router: router}
}

// call makes a request and checks the response against the OpenAPI spec.
func (e *env) call(method, path, token string, body any, wantStatus int) []byte {
	e.t.Helper()
	var rd io.Reader
	var raw []byte
	if body != nil {
		raw, _ = json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, wantStatus, out)
	}
	route, params, err := e.router.FindRoute(req)
	if err != nil {
		e.t.Fatalf("%s %s: not in the OpenAPI spec: %v", method, path, err)
	}
	if body != nil {
		req.Body = io.NopCloser(bytes.NewReader(raw))
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	err = openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(out)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	})
	if err != nil {
		e.t.Fatalf("%s %s: response does not match the spec: %v\n%s", method, path, err, out)
	}
	return out
}

func TestKeysLifecycleAndSpec(t *testing.T) {
	e := setup(t)
	var created api.CreatedJSON
	out := e.call("POST", "/v1/keys", adminSecret, map[string]any{"project": "proj_api", "name": "ci", "monthly_quota": 1000, "scopes": []string{"read"}}, 201)
	if err := json.Unmarshal(out, &created); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(created.Secret, "km_live_") || created.Key.Status != "active" {
		t.Fatalf("created: %s", out)
	}
	id := created.Key.ID
	e.call("GET", "/v1/keys/"+id, readSecret, nil, 200)
	if strings.Contains(string(e.call("GET", "/v1/keys?project=proj_api", readSecret, nil, 200)), created.Secret) {
		t.Fatal("secret shown after creation")
	}
	e.call("PATCH", "/v1/keys/"+id, adminSecret, map[string]any{"rate_limit_per_s": 5.0, "rate_limit_burst": 10}, 200)
	e.call("POST", "/v1/keys/"+id+"/suspend", adminSecret, nil, 200)
	e.call("POST", "/v1/keys/"+id+"/resume", adminSecret, nil, 200)
	var rotated api.CreatedJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys/"+id+"/rotate", adminSecret, map[string]any{"grace_period": "1h"}, 201), &rotated)
	if rotated.Key.Replaces != id {
		t.Fatalf("rotated key does not name the old one: %+v", rotated.Key)
	}
	var revoked api.KeyJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys/"+id+"/revoke", adminSecret, map[string]any{"reason": "leaked"}, 200), &revoked)
	if revoked.Status != "revoked" || revoked.RevokeReason != "leaked" {
		t.Fatalf("revoke: %+v", revoked)
	}
	e.call("POST", "/v1/keys/"+id+"/suspend", adminSecret, nil, 409)
	e.call("GET", "/v1/keys/key_nope", readSecret, nil, 404)

	// Pagination: three more keys, pages of two.
	for i := range 3 {
		e.call("POST", "/v1/keys", adminSecret, map[string]any{"project": "proj_page", "name": fmt.Sprint(i)}, 201)
	}
	var page api.KeyList
	_ = json.Unmarshal(e.call("GET", "/v1/keys?project=proj_page&limit=2", readSecret, nil, 200), &page)
	if len(page.Keys) != 2 || page.Next == "" {
		t.Fatalf("first page: %+v", page)
	}
	var page2 api.KeyList
	_ = json.Unmarshal(e.call("GET", "/v1/keys?project=proj_page&limit=2&cursor="+page.Next, readSecret, nil, 200), &page2)
	if len(page2.Keys) != 1 || page2.Next != "" || page2.Keys[0].ID <= page.Keys[1].ID {
		t.Fatalf("second page: %+v", page2)
	}
}

func TestAuthAndErrors(t *testing.T) {
	e := setup(t)
	body := e.call("GET", "/v1/keys", "", nil, 401)
	if !strings.Contains(string(body), `"code": "unauthenticated"`) {
		t.Fatalf("401 body: %s", body)
	}
	e.call("GET", "/v1/keys", "wrong", nil, 401)
	e.call("POST", "/v1/keys", readSecret, map[string]any{"project": "p"}, 403)
	b := e.call("POST", "/v1/keys", adminSecret, map[string]any{"project": "p", "colour": "red"}, 400)
	if !strings.Contains(string(b), `"field": "colour"`) {
		t.Fatalf("unknown field error: %s", b)
	}
	e.call("POST", "/v1/keys", adminSecret, map[string]any{"name": "no project"}, 400)
	b = e.call("GET", "/v1/logs?colour=red", readSecret, nil, 400)
	if !strings.Contains(string(b), "colour") {
		t.Fatalf("bad filter error: %s", b)
	}
	e.call("GET", "/v1/usage?key=key_api&granularity=fortnight", readSecret, nil, 400)
}

func TestUsageLogsDecisions(t *testing.T) {
	e := setup(t)
	var u api.UsageResponse
	_ = json.Unmarshal(e.call("GET", "/v1/usage?key=key_api&granularity=day", readSecret, nil, 200), &u)
	var total uint64
	for _, p := range u.Points {
		total += p.Requests
	}
	if total != 31 {
		t.Fatalf("usage total %d, want 31: %+v", total, u)
	}
	var l api.LogsResponse
	_ = json.Unmarshal(e.call("GET", "/v1/logs?key=key_api&limit=10", readSecret, nil, 200), &l)
	if len(l.Events) != 10 || l.Next == "" || !l.Events[0].Time.After(l.Events[9].Time) {
		t.Fatalf("logs page: %d events, next %q", len(l.Events), l.Next)
	}
	seen := map[string]bool{}
	cursor := ""
	for {
		path := "/v1/logs?key=key_api&limit=7"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		var p api.LogsResponse
		_ = json.Unmarshal(e.call("GET", path, readSecret, nil, 200), &p)
		for _, ev := range p.Events {
			if seen[ev.ID] {
				t.Fatalf("event %s on two pages", ev.ID)
			}
			seen[ev.ID] = true
		}
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	if len(seen) != 31 {
		t.Fatalf("paging saw %d events, want 31", len(seen))
	}
	seenDec := map[string]bool{}
	for cur := ""; ; {
		path := "/v1/decisions?limit=2"
		if cur != "" {
			path += "&cursor=" + cur
		}
		var page struct {
			Decisions []api.DecisionJSON
			Next      string
		}
		_ = json.Unmarshal(e.call("GET", path, readSecret, nil, 200), &page)
		for _, d := range page.Decisions {
			if seenDec[d.ID] {
				t.Fatalf("decision %s on two pages", d.ID)
			}
			seenDec[d.ID] = true
		}
		if page.Next == "" {
			break
		}
		cur = page.Next
	}
	if len(seenDec) != 5 {
		t.Fatalf("paging saw %d decisions, want 5", len(seenDec))
	}
	rules := e.call("GET", "/v1/rules", readSecret, nil, 200)
	if !strings.Contains(string(rules), `"geography-shift"`) {
		t.Fatalf("/v1/rules lacks the starter rules: %.200s", rules)
	}
	e.call("GET", "/v1/billing/"+time.Now().UTC().Format("2006-01")+"?format=json", readSecret, nil, 200)
	e.call("GET", "/v1/billing/2026-13", readSecret, nil, 400)
	var lbl struct{ Label string }
	_ = json.Unmarshal(e.call("POST", "/v1/leaks/hash", adminSecret, map[string]any{"token_sha256": strings.Repeat("ab", 32)}, 200), &lbl)
	if lbl.Label != "false_positive" {
		t.Fatalf("unknown hash labelled %q", lbl.Label)
	}
	e.call("POST", "/v1/leaks/hash", readSecret, map[string]any{"token_sha256": strings.Repeat("ab", 32)}, 403)
	e.call("POST", "/v1/leaks", "", []map[string]string{{"token": "x", "type": "t"}}, 401)
	resp, err := http.Get(e.url + "/v1/nope")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || !strings.Contains(string(b), `"code": "not_found"`) {
		t.Fatalf("unknown route: %d %s", resp.StatusCode, b)
	}
	resp, err = http.Get(e.url + "/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(b), "openapi: 3.1.0") {
		t.Fatalf("/openapi.yaml: %.40s", b)
	}
}
