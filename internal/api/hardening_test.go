package api_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/api"
)

// raw sends a request with a body as given (no spec check: many of these
// requests are invalid on purpose) and returns status, headers and body.
func (e *env) raw(method, path, authz, contentType, body string) (int, http.Header, string) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(out)
}

const bearerAdmin = "Bearer " + adminSecret

func errorOf(t *testing.T, body string) api.Error {
	t.Helper()
	var out struct{ Error api.Error }
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("not an error body: %s", body)
	}
	return out.Error
}

// Issue 12 item 12: strict JSON, limits, field names as the API names them.
func TestStrictJSONBodies(t *testing.T) {
	e := setup(t)
	cases := []struct {
		name, contentType, body string
		status                  int
		field                   string
	}{
		{"trailing data", "application/json", `{"project":"p"} {"project":"q"}`, 400, ""},
		{"trailing garbage", "application/json", `{"project":"p"}x`, 400, ""},
		{"field case", "application/json", `{"Project":"p"}`, 400, "Project"},
		{"null string", "application/json", `{"project":"p","name":null}`, 400, "name"},
		{"null in a list", "application/json", `{"project":"p","scopes":["a",null]}`, 400, "scopes"},
		{"empty env", "application/json", `{"project":"p","env":""}`, 400, "env"},
		{"no content type", "", `{"project":"p"}`, 415, ""},
		{"text/plain", "text/plain", `{"project":"p"}`, 415, ""},
		{"Go struct path", "application/json", `{"project":"p","rate_limit_per_s":"fast"}`, 400, "rate_limit_per_s"},
		{"fractional integer", "application/json", `{"project":"p","monthly_quota":1.5}`, 400, "monthly_quota"},
		{"long name", "application/json", `{"project":"p","name":"` + strings.Repeat("n", 257) + `"}`, 400, "name"},
		{"huge name", "application/json", `{"project":"p","name":"` + strings.Repeat("n", 1<<20) + `"}`, 413, ""},
		{"metadata entries", "application/json", `{"project":"p","metadata":{` + entries(65) + `}}`, 400, "metadata"},
		{"CIDR list", "application/json", `{"project":"p","allowed_cidrs":[` + strings.TrimSuffix(strings.Repeat(`"10.0.0.0/8",`, 257), ",") + `]}`, 400, "allowed_cidrs"},
		{"CIDR with zone", "application/json", `{"project":"p","allowed_cidrs":["fe80::1%eth0"]}`, 400, "allowed_cidrs[0]"},
		{"scopes", "application/json", `{"project":"p","scopes":[` + strings.TrimSuffix(strings.Repeat(`"s",`, 65), ",") + `]}`, 400, "scopes"},
	}
	for _, tc := range cases {
		st, _, body := e.raw("POST", "/v1/keys", bearerAdmin, tc.contentType, tc.body)
		if st != tc.status {
			t.Errorf("%s: status %d, want %d: %.300s", tc.name, st, tc.status, body)
			continue
		}
		ae := errorOf(t, body)
		if tc.field != "" && ae.Field != tc.field {
			t.Errorf("%s: error field %q, want %q (%s)", tc.name, ae.Field, tc.field, ae.Message)
		}
		if strings.Contains(body, "KeyLimitsJSON") || strings.Contains(body, "CreateKeyRequest") {
			t.Errorf("%s: error shows Go names: %s", tc.name, body)
		}
	}
	// Integers written as integral numbers are integers (JSON Schema agrees).
	st, _, body := e.raw("POST", "/v1/keys", bearerAdmin, "application/json; charset=utf-8", `{"project":"p","monthly_quota":662.0,"rate_limit_burst":1e1}`)
	if st != 201 || !strings.Contains(body, `"monthly_quota": 662`) {
		t.Fatalf("662.0: %d %s", st, body)
	}
}

func entries(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%d":"v"`, i)
	}
	return b.String()
}

// Issue 12 items 5 and 6: times outside the nanosecond range and absurd
// rates are refused naming the field and the accepted range.
func TestKeyTimesAndRatesInRange(t *testing.T) {
	e := setup(t)
	for _, tc := range []struct{ body, field, want string }{
		{`{"project":"p","expires_at":"2300-01-01T00:00:00Z"}`, "expires_at", "1971 to 2261"},
		{`{"project":"p","expires_at":"1000-01-01T00:00:00Z"}`, "expires_at", "1971 to 2261"},
		{`{"project":"p","rate_limit_per_s":1e-300}`, "rate_limit_per_s", "0.001 to 1e+06"},
		{`{"project":"p","rate_limit_per_s":1e300}`, "rate_limit_per_s", "0.001 to 1e+06"},
	} {
		st, _, body := e.raw("POST", "/v1/keys", bearerAdmin, "application/json", tc.body)
		ae := errorOf(t, body)
		if st != 400 || ae.Field != tc.field || !strings.Contains(ae.Message, tc.want) {
			t.Errorf("%s: %d %s", tc.body, st, body)
		}
	}
	var c api.CreatedJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys", adminSecret, map[string]any{"project": "p", "expires_at": "2261-12-31T23:59:59Z"}, 201), &c)
	if c.Key.ExpiresAt == nil || c.Key.ExpiresAt.Year() != 2261 {
		t.Fatalf("expiry 2261 stored as %v", c.Key.ExpiresAt)
	}
	for _, tc := range []struct{ body, field string }{
		{`{"throttle_per_s":1,"throttle_until":"2300-01-01T00:00:00Z"}`, "throttle_until"},
		{`{"throttle_per_s":1e-300}`, "throttle_per_s"},
		{`{"expires_at":"1000-01-01T00:00:00Z"}`, "expires_at"},
	} {
		st, _, body := e.raw("PATCH", "/v1/keys/"+c.Key.ID, bearerAdmin, "application/json", tc.body)
		if ae := errorOf(t, body); st != 400 || ae.Field != tc.field {
			t.Errorf("PATCH %s: %d %s", tc.body, st, body)
		}
	}
}

// Issue 12 items 7 and 13, and the query strings schemathesis found.
func TestQueryParameters(t *testing.T) {
	e := setup(t)
	for _, tc := range []struct {
		path   string
		status int
		field  string
	}{
		{"/v1/usage?key=key_api&to=9999-01-01T00:00:00Z", 400, "to"},
		{"/v1/usage?key=key_api&from=0001-01-01T00:00:00Z", 400, "from"},
		{"/v1/logs?from=9223372036854775807", 400, "from"},
		{"/v1/logs?key=key_api&limit=0", 400, "limit"},
		{"/v1/decisions?limit=0", 400, "limit"},
		{"/v1/keys?project=", 400, "project"},
		{"/v1/keys?status=", 400, "status"},
		{"/v1/usage?project=", 400, "project"},
		{"/v1/logs?key=key_api&key=other", 400, "key"},
		{"/v1/billing/0000-00", 400, "period"},
		{"/v1/billing/2026-11?format=", 400, "format"},
		{"/v1/keys?limit=662.0", 200, ""},
		{"/v1/logs?key=key_api&status=200-299", 200, ""},
		{"/v1/logs?key=key_api&status=599-500", 200, ""},
		{"/v1/logs?ip=203.0.113.0/24", 200, ""},
		{"/v1/logs?ip=::/0", 200, ""},
		{"/v1/usage", 200, ""},
		{"/v1/usage?key=key_api&from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z", 200, ""},
	} {
		st, _, body := e.raw("GET", tc.path, "Bearer "+readSecret, "", "")
		if st != tc.status {
			t.Errorf("%s: %d, want %d: %.300s", tc.path, st, tc.status, body)
			continue
		}
		if tc.field != "" {
			if ae := errorOf(t, body); ae.Field != tc.field {
				t.Errorf("%s: field %q, want %q", tc.path, ae.Field, tc.field)
			}
		}
	}
	// 500-599 is the documented range form; 2xx counts the same events.
	var a, b api.LogsResponse
	_ = json.Unmarshal(e.call("GET", "/v1/logs?key=key_api&status=200-299&limit=100", readSecret, nil, 200), &a)
	_ = json.Unmarshal(e.call("GET", "/v1/logs?key=key_api&status=2xx&limit=100", readSecret, nil, 200), &b)
	if len(a.Events) != 31 || len(b.Events) != 31 {
		t.Fatalf("status 200-299: %d events, 2xx: %d, want 31", len(a.Events), len(b.Events))
	}
	// Issue 12 item 4: a CIDR search over an event without an address.
	var l api.LogsResponse
	_ = json.Unmarshal(e.call("GET", "/v1/logs?ip="+url.QueryEscape("203.0.113.0/24")+"&from=2020-01-01T00:00:00Z", readSecret, nil, 200), &l)
	if len(l.Events) != 30 {
		t.Fatalf("CIDR search: %d events, want the 30 with an address", len(l.Events))
	}
}

// Issue 12 item 13: Bearer in any case, 405 with Allow.
func TestSchemeCaseAndMethods(t *testing.T) {
	e := setup(t)
	for _, authz := range []string{"bearer " + readSecret, "BEARER " + readSecret, "Bearer " + readSecret} {
		if st, _, body := e.raw("GET", "/v1/keys", authz, "", ""); st != 200 {
			t.Errorf("%q: %d %s", strings.Fields(authz)[0], st, body)
		}
	}
	if st, _, _ := e.raw("GET", "/v1/keys", "Basic "+readSecret, "", ""); st != 401 {
		t.Errorf("Basic scheme: %d", st)
	}
	for _, tc := range []struct{ method, path, allow string }{
		{"PUT", "/v1/keys", "GET, POST"},
		{"DELETE", "/v1/usage", "GET"},
		{"PUT", "/v1/keys/key_x", "GET, PATCH, DELETE"},
		{"GET", "/v1/keys/key_x/rotate", "POST"},
		{"HEAD", "/v1/keys", "GET, POST"},
		{"TRACE", "/healthz", "GET"},
		{"GET", "/v1/billing/2026-01/close", "POST"},
	} {
		st, h, _ := e.raw(tc.method, tc.path, bearerAdmin, "", "")
		if st != 405 || h.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d Allow %q, want 405 Allow %q", tc.method, tc.path, st, h.Get("Allow"), tc.allow)
		}
	}
	if st, _, _ := e.raw("GET", "/v1/nope", bearerAdmin, "", ""); st != 404 {
		t.Errorf("unknown path: %d", st)
	}
}

// Issue 12 item 13: events older than the store's retention are dropped
// and listed, never silently accepted.
func TestEventsOlderThanRetention(t *testing.T) {
	e := setup(t)
	now := time.Now().UTC()
	body := fmt.Sprintf(`[{"id":"a","time":%q,"outcome":"valid"},{"id":"b","time":%q,"outcome":"valid","client_ip":""},{"id":"c","time":%q,"outcome":"valid","asn":662.0}]`,
		now.Add(-400*24*time.Hour).Format(time.RFC3339), now.Format(time.RFC3339), now.Format(time.RFC3339))
	st, _, out := e.raw("POST", "/v1/events", bearerAdmin, "application/json", body)
	var r api.EventsResponse
	_ = json.Unmarshal([]byte(out), &r)
	if st != 202 || r.Accepted != 2 || len(r.Dropped) != 1 || r.Dropped[0].Index != 0 || r.Dropped[0].Field != "time" {
		t.Fatalf("events: %d %s", st, out)
	}
	for _, tc := range []struct{ body, field string }{
		{`[{"id":"a","time":"2026-01-01T00:00:00Z","outcome":"valid","Country":"DE"}]`, "[0].Country"},
		{`[{"id":"a","time":"2026-01-01T00:00:00Z","outcome":"valid"},{"id":"b","time":"3000-01-01T00:00:00Z","outcome":"valid"}]`, "[1].time"},
		{`{"id":"a","time":"2026-01-01T00:00:00Z","outcome":"valid","project":null}`, "project"},
		{`{"id":"a","time":"2026-01-01T00:00:00Z","outcome":"valid","client_ip":"fe80::1%eth0"}`, "client_ip"},
	} {
		st, _, out := e.raw("POST", "/v1/events", bearerAdmin, "application/json", tc.body)
		if ae := errorOf(t, out); st != 400 || ae.Field != tc.field {
			t.Errorf("%s: %d %s", tc.body, st, out)
		}
	}
}

// Issue 12 item 10 and issue 14 item 2: a replacement inherits suspension,
// throttle, scopes, limits and kind; kinds are set and changed by the API.
func TestKindsAndRotationInheritance(t *testing.T) {
	e := setup(t)
	var c api.CreatedJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys", adminSecret, map[string]any{"project": "p"}, 201), &c)
	if c.Key.Kind != "server" {
		t.Fatalf("default kind %q", c.Key.Kind)
	}
	_ = json.Unmarshal(e.call("POST", "/v1/keys", adminSecret, map[string]any{"project": "p", "kind": "mobile", "scopes": []string{"read"},
		"rate_limit_per_s": 5, "monthly_quota": 100}, 201), &c)
	if c.Key.Kind != "mobile" {
		t.Fatalf("kind %q, want mobile", c.Key.Kind)
	}
	if st, _, body := e.raw("POST", "/v1/keys", bearerAdmin, "application/json", `{"project":"p","kind":"desktop"}`); st != 400 || errorOf(t, body).Field != "kind" {
		t.Fatalf("unknown kind: %d %s", st, body)
	}
	id := c.Key.ID
	var k api.KeyJSON
	_ = json.Unmarshal(e.call("PATCH", "/v1/keys/"+id, adminSecret, map[string]any{"kind": "batch", "throttle_per_s": 1}, 200), &k)
	if k.Kind != "batch" || k.ThrottlePerS != 1 {
		t.Fatalf("after update: %+v", k)
	}
	e.call("POST", "/v1/keys/"+id+"/suspend", adminSecret, nil, 200)
	var r api.CreatedJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys/"+id+"/rotate", adminSecret, map[string]any{"grace_period": "1h"}, 201), &r)
	n := r.Key
	if n.Status != "suspended" || n.Kind != "batch" || n.ThrottlePerS != 1 || len(n.Scopes) != 1 || n.RateLimitPerS != 5 || n.MonthlyQuota != 100 {
		t.Fatalf("replacement of a suspended key: %+v", n)
	}
	st, _, body := e.raw("POST", "/v1/keys/"+id+"/rotate", bearerAdmin, "application/json", `{"grace_period":"1.5h"}`)
	if st != 400 || errorOf(t, body).Field != "grace_period" {
		t.Fatalf("grace 1.5h: %d %s", st, body)
	}
}

// Issue 12 item 11: reading a past period never closes it; closing is an
// admin's explicit POST.
func TestBillingReadsNeverClose(t *testing.T) {
	e := setup(t)
	past := time.Now().UTC().AddDate(0, -3, 0).Format("2006-01")
	var ex struct{ Closed bool }
	for range 2 {
		_ = json.Unmarshal(e.call("GET", "/v1/billing/"+past, readSecret, nil, 200), &ex)
		if ex.Closed {
			t.Fatal("a read closed the period")
		}
	}
	e.call("POST", "/v1/billing/"+past+"/close", readSecret, nil, 403)
	_ = json.Unmarshal(e.call("POST", "/v1/billing/"+past+"/close", adminSecret, nil, 200), &ex)
	if !ex.Closed {
		t.Fatal("close did not close")
	}
	_ = json.Unmarshal(e.call("GET", "/v1/billing/"+past, readSecret, nil, 200), &ex)
	if !ex.Closed {
		t.Fatal("closed period read as open")
	}
	// The current month is not due.
	e.call("POST", "/v1/billing/"+time.Now().UTC().Format("2006-01")+"/close", adminSecret, nil, 409)
}
