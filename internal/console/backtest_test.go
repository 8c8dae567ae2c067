package console_test

import (
	"bytes"
	"context"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// busyRule alerts (dry-run) on a key with 50 valid requests in a minute.
const busyRule = `id: console-busy-key
version: 1
name: Busy key
description: a key with many requests in a minute
severity: low
mode: dry_run
match: outcome == "valid"
aggregate:
  group_by: [key_id]
  window: 1m
suppress: 1m
actions:
  - type: alert
    when: count >= 50
`

// storeBurst stores, for key, n valid events one per second ending a
// minute ago and bursts of 100 events in a second at each of the times.
func storeBurst(t *testing.T, e *env, key string, bursts ...time.Time) {
	t.Helper()
	var evs []event.Event
	for bi, b := range bursts {
		for i := range 100 {
			evs = append(evs, event.Event{ID: fmt.Sprintf("bt-%s-%d-%d", key, bi, i), Time: b.Add(time.Duration(i) * 10 * time.Millisecond),
				Project: "proj_bt", KeyID: key, Outcome: event.OutcomeValid, ClientIP: "192.0.2.7", Country: "DE", ASN: 64500,
				Method: "GET", Route: "/v1/items", Status: 200, CostUnits: 1})
		}
	}
	if err := e.db.InsertEvents(context.Background(), "bt-"+key, evs); err != nil {
		t.Fatal(err)
	}
}

func csrfOf(t *testing.T, c *http.Client, u string) string {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	m := csrfRE.FindStringSubmatch(body(t, resp))
	if m == nil {
		t.Fatalf("no csrf token on %s", u)
	}
	return m[1]
}

// multipartPost posts a backtest form as the browser does (multipart).
func multipartPost(t *testing.T, c *http.Client, u string, fields url.Values, fileName, file string) (int, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, vs := range fields {
		for _, v := range vs {
			_ = mw.WriteField(k, v)
		}
	}
	if fileName != "" {
		fw, _ := mw.CreateFormFile("upload", fileName)
		_, _ = fw.Write([]byte(file))
	}
	mw.Close()
	resp, err := c.Post(u, mw.FormDataContentType(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body(t, resp)
}

func TestBacktestFromConsole(t *testing.T) {
	e := setup(t)
	now := time.Now().UTC().Truncate(time.Minute)
	storeBurst(t, e, "key_bt_busy", now.Add(-3*time.Hour), now.Add(-90*time.Minute))
	adm := client(t, nil)
	login(t, adm, e.url, adminSecret, "").Body.Close()
	csrf := csrfOf(t, adm, e.url+"/console/backtest")
	form := func(src, rules string) url.Values {
		return url.Values{"csrf": {csrf}, "source": {src}, "rules": {rules}, "max_events": {"100000"},
			"from": {now.Add(-6 * time.Hour).Format("2006-01-02T15:04")}, "to": {now.Add(time.Minute).Format("2006-01-02T15:04")}}
	}

	t.Run("pasted_rule_timeline", func(t *testing.T) {
		status, b := multipartPost(t, adm, e.url+"/console/backtest", form("file", busyRule), "", "")
		if status != 200 || !strings.Contains(b, `id="backtest-timeline"`) || !strings.Contains(b, "Would-be decisions: 2") {
			t.Fatalf("backtest: %d\n%s", status, b)
		}
		if !strings.Contains(b, "key_bt_busy") || !strings.Contains(b, "dry_run alert") || !strings.Contains(b, "over 200 stored events") {
			t.Fatalf("backtest result lacks the key, the series or the event count:\n%s", b)
		}
	})
	t.Run("uploaded_file_lint_errors_with_line", func(t *testing.T) {
		bad := strings.Replace(busyRule, "window: 1m", "window: 1 minute", 1)
		status, b := multipartPost(t, adm, e.url+"/console/backtest", form("file", ""), "busy.yaml", bad)
		if status != 400 || !strings.Contains(b, "busy.yaml:10") || strings.Contains(b, `id="backtest-result"`) {
			t.Fatalf("a bad duration: want 400 with busy.yaml:10 and no result, got %d\n%s", status, b)
		}
		// What was uploaded is now in the text box, to be fixed there.
		if !strings.Contains(b, "window: 1 minute") {
			t.Fatal("the uploaded file is not kept in the form")
		}
	})
	t.Run("failed_inline_test_shown", func(t *testing.T) {
		withTest := busyRule + "tests:\n  - name: fifty fire\n    events:\n      - {count: 10, every: 1s, outcome: valid, key_id: k1}\n    expect:\n      - {action: alert, group: k1}\n"
		status, b := multipartPost(t, adm, e.url+"/console/backtest", form("file", withTest), "", "")
		if status != 200 || !strings.Contains(b, "1 inline test(s) failed") || !strings.Contains(b, "pasted.yaml:16") {
			t.Fatalf("failing inline test: %d\n%s", status, b)
		}
	})
	t.Run("alias_bomb_and_huge_test_refused", func(t *testing.T) {
		// Nested aliases ("billion laughs") are refused before expansion.
		bomb := "a0: &a0 [\"xxxxxxxxxxxxxxxx\"]\n"
		for i := 1; i <= 4; i++ {
			prev := fmt.Sprintf("*a%d", i-1)
			bomb += fmt.Sprintf("a%d: &a%d [%s%s]\n", i, i, strings.Repeat(prev+",", 9), prev)
		}
		status, b := multipartPost(t, adm, e.url+"/console/backtest", form("file", ""), "bomb.yaml", bomb+"id: x\n")
		if status != 400 || !strings.Contains(b, "bomb.yaml:1") || !strings.Contains(b, "anchors and aliases") {
			t.Fatalf("alias bomb: want 400 refusing anchors at bomb.yaml:1, got %d\n%s", status, b)
		}
		huge := busyRule + "tests:\n  - name: huge\n    events:\n      - {count: 3000000, every: 1ms, key_id: k1}\n    expect: []\n"
		status, b = multipartPost(t, adm, e.url+"/console/backtest", form("file", huge), "", "")
		if status != 400 || !strings.Contains(b, "pasted.yaml:18") || !strings.Contains(b, "100,000") {
			t.Fatalf("3,000,000 test events: want 400 at pasted.yaml:18 naming the cap, got %d\n%s", status, b)
		}
	})
	t.Run("loaded_rule", func(t *testing.T) {
		f := form("loaded", "")
		f.Set("rule", "anonymous-burst")
		status, b := multipartPost(t, adm, e.url+"/console/backtest", f, "", "")
		if status != 200 || !strings.Contains(b, "loaded rule anonymous-burst") || !strings.Contains(b, `id="no-decisions"`) {
			t.Fatalf("loaded rule: %d\n%s", status, b)
		}
		f.Set("rule", "no-such-rule")
		if status, b = multipartPost(t, adm, e.url+"/console/backtest", f, "", ""); status != 400 || !strings.Contains(b, `id="e-rule"`) {
			t.Fatalf("unknown loaded rule: %d", status)
		}
	})
	t.Run("bounds", func(t *testing.T) {
		f := form("file", busyRule)
		f.Set("from", now.Add(-40*24*time.Hour).Format("2006-01-02T15:04"))
		f.Set("max_events", "0")
		status, b := multipartPost(t, adm, e.url+"/console/backtest", f, "", "")
		if status != 400 || !strings.Contains(b, `id="e-to"`) || !strings.Contains(b, `id="e-max_events"`) {
			t.Fatalf("over-long range and zero cap: %d", status)
		}
		// A warm-up longer than the range is refused by its field; one
		// past the first burst leaves only the second's decision.
		f = form("file", busyRule)
		f.Set("warmup", "7h")
		if status, b = multipartPost(t, adm, e.url+"/console/backtest", f, "", ""); status != 400 || !strings.Contains(b, `id="e-warmup"`) {
			t.Fatalf("warmup over the range: %d", status)
		}
		f.Set("warmup", "1h")
		if status, b = multipartPost(t, adm, e.url+"/console/backtest", f, "", ""); status != 200 || !strings.Contains(b, "Would-be decisions: 1") || !strings.Contains(b, "no decisions in the first 1h0m0s") {
			t.Fatalf("warmup 1h: %d\n%s", status, b)
		}
		// The event cap stops the replay and says so.
		f = form("file", busyRule)
		f.Set("max_events", "120")
		status, b = multipartPost(t, adm, e.url+"/console/backtest", f, "", "")
		if status != 200 || !strings.Contains(b, "Stopped at the event cap") || !strings.Contains(b, "Would-be decisions: 1") {
			t.Fatalf("capped: %d\n%s", status, b)
		}
	})
	t.Run("csrf_and_role", func(t *testing.T) {
		f := form("file", busyRule)
		f.Del("csrf")
		if status, _ := multipartPost(t, adm, e.url+"/console/backtest", f, "", ""); status != http.StatusForbidden {
			t.Fatalf("no csrf: %d", status)
		}
		rd := client(t, nil)
		login(t, rd, e.url, readSecret, "").Body.Close()
		resp, _ := rd.Get(e.url + "/console/backtest")
		b := body(t, resp)
		if strings.Contains(b, `id="run-backtest"`) || !strings.Contains(b, "backtest-admin-only") {
			t.Fatal("a read session sees the backtest form")
		}
		rc := csrfOf(t, rd, e.url+"/console/keys")
		f.Set("csrf", rc)
		if status, _ := multipartPost(t, rd, e.url+"/console/backtest", f, "", ""); status != http.StatusForbidden {
			t.Fatalf("read session's backtest: %d", status)
		}
	})
}
