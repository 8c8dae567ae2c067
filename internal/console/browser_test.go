package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/billing"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/console"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/leaks"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

const adminSecret, readSecret = "console-admin-token", "console-read-token"

// env is a whole API (embedded NATS, key service, chDB store, detector)
// serving the console on a loopback listener.
type env struct {
	t        *testing.T
	url      string
	db       *store.DB
	bus      bus.Bus
	shutdown func() // ends live streams, as the server's shutdown does
	handler  http.Handler
}

var (
	chdbOnce sync.Once
	chdbPath string
)

// chdbDir is this test process's embedded store directory: chDB takes one
// per process; each test gets its own database in it.
func chdbDir(t *testing.T) string {
	chdbOnce.Do(func() {
		d, err := os.MkdirTemp("", "keymeter-console-test-chdb-")
		if err != nil {
			t.Fatal(err)
		}
		chdbPath = d
	})
	return chdbPath
}

func setup(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	srv, err := natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: filepath.Join(dir, "nats")})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	b, err := natsbus.New(context.Background(), natsbus.Config{Partitions: 2}, natsbus.WithEmbedded(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	table, err := keys.NewTable(keys.TableConfig{KeepState: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = table.Run(ctx, b) }()
	<-table.Ready()
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: b, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	db, err := chdb.Open(chdb.Config{DataDir: chdbDir(t), Database: fmt.Sprintf("console_%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatalf("open chdb (CHDB_LIB_PATH=%q): %v", os.Getenv("CHDB_LIB_PATH"), err)
	}
	t.Cleanup(func() { _ = db.Close(context.Background()) })
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	set, err := detect.LoadPaths(detect.CompileOptions{}, "../../rules")
	if err != nil {
		t.Fatal(err)
	}
	eng, err := detect.New(detect.Config{Sink: detect.SinkFunc(func(*keymeterv1.Decision) {})}, set)
	if err != nil {
		t.Fatal(err)
	}
	if err := detector.FollowRuleModes(ctx, b, eng, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	lh, err := leaks.New(leaks.Config{Table: table, Keys: svc, Store: db, Policy: "revoke"})
	if err != nil {
		t.Fatal(err)
	}
	adm, _ := api.ParseToken("admin:" + api.HashToken(adminSecret))
	rd, _ := api.ParseToken("read:" + api.HashToken(readSecret))
	done := make(chan struct{})
	var once sync.Once
	stop := func() { once.Do(func() { close(done) }) }
	s, err := api.New(api.Config{Tokens: []api.Token{adm, rd}, Keys: svc, KeyTable: table, Usage: db, Logs: db, Decision: db,
		Billing: &billing.Exporter{Store: db}, Rules: eng, Ready: table.Loaded, Audit: db, Leaks: lh,
		RuleModes: detector.ModeSwitch{Bus: b, Known: eng.HasRule},
		Console:   console.Sources{Store: db, Bus: b, Rules: eng.RuleSet, Done: done}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	t.Cleanup(stop) // before hs.Close: open streams end first
	return &env{t: t, url: hs.URL, db: db, bus: b, shutdown: stop, handler: s}
}

// apiKey reads a key through the REST API (not the console).
func (e *env) apiKey(id string) map[string]any {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.url+"/v1/keys/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+adminSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var k map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&k); err != nil || resp.StatusCode != 200 {
		e.t.Fatalf("GET /v1/keys/%s: %d %v", id, resp.StatusCode, err)
	}
	return k
}

// browser starts Debian's chromium headless. A missing browser fails the
// test: the console's tests are part of make test.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := os.Getenv("CHROMIUM")
	if path == "" {
		for _, n := range []string{"chromium", "chromium-browser"} {
			if p, err := exec.LookPath(n); err == nil {
				path = p
				break
			}
		}
	}
	if path == "" {
		t.Fatal("chromium is not installed: the console's browser tests need it (apt-get install chromium, or make debian-deps)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.NoFirstRun, chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	bctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	// Start the browser now; every test then opens its own browser context
	// (its own cookies) from it.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return bctx
}

// tab opens a fresh browser context (no cookies shared) with a deadline.
func tab(t *testing.T, bctx context.Context) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(bctx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	// Open the tab with its own context: a tab opened under a shorter-lived
	// context closes with it.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	ctx, cancel2 := context.WithTimeout(ctx, 120*time.Second)
	t.Cleanup(cancel2)
	return ctx
}

// do runs actions with a generous deadline of their own; on failure it
// reports where the page was and what it said.
func do(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		loc, _ := chromedp.Run(ctx, chromedp.Location())
		txt, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		t.Fatalf("%s: %v\nat %s:\n%s", what, err, loc, txt)
	}
}

func run[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// shot saves a PNG of the page to testdata/screenshots (ignored by git)
// and checks that it is not blank.
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	buf := run(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil {
		t.Fatalf("screenshot %s is not a PNG: %v", name, err)
	}
	if n := colours(img); n < 8 {
		t.Fatalf("screenshot %s looks blank: %d colours", name, n)
	}
	dir := filepath.Join("testdata", "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

func colours(img image.Image) int {
	seen := map[[3]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 3 {
		for x := b.Min.X; x < b.Max.X; x += 3 {
			r, g, bl, _ := img.At(x, y).RGBA()
			seen[[3]uint32{r >> 8, g >> 8, bl >> 8}] = true
			if len(seen) > 64 {
				return len(seen)
			}
		}
	}
	return len(seen)
}

func signIn(t *testing.T, ctx context.Context, base, token string) {
	t.Helper()
	do(t, ctx, "sign in",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("sign-in")),
		chromedp.WaitVisible(chromedp.ID("sign-out")),
	)
}

// post sends a form POST from the page (fetch, same origin, with the
// session cookie) and returns the status.
func post(t *testing.T, ctx context.Context, path, body string) int {
	t.Helper()
	js := fmt.Sprintf(`fetch(%q, {method: "POST", headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: %q, redirect: "manual"}).then(r => r.status)`, path, body)
	return run(t, ctx, "POST "+path, chromedp.Evaluate[int](js, chromedp.EvalAwaitPromise))
}

// clickAndLoad clicks a link and waits for the page it leads to to load.
func clickAndLoad(t *testing.T, ctx context.Context, sel string) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := chromedp.Run(sctx, chromedp.WaitEvent(page.LoadEventFired, nil, chromedp.Click(chromedp.CSS(sel)))); err != nil {
		t.Fatalf("click %s: %v", sel, err)
	}
}

func pageText(t *testing.T, ctx context.Context) string {
	t.Helper()
	return run(t, ctx, "page text", chromedp.Evaluate[string](`document.body.innerText`))
}

func TestConsoleInBrowser(t *testing.T) {
	e := setup(t)
	bctx := browser(t)
	var keyID, secret string

	t.Run("sign_in", func(t *testing.T) {
		ctx := tab(t, bctx)
		do(t, ctx, "login page", chromedp.Navigate(e.url+"/"), chromedp.WaitVisible(chromedp.ID("token")))
		loc := run(t, ctx, "location", chromedp.Location())
		if !strings.Contains(loc, "/console/login") {
			t.Fatalf("/ led to %s, want the console's sign-in", loc)
		}
		// A wrong token: the error is next to the field.
		do(t, ctx, "wrong token", chromedp.SendKeys(chromedp.ID("token"), "not-a-token"), chromedp.Click(chromedp.ID("sign-in")),
			chromedp.WaitVisible(chromedp.ID("token-error")))
		if msg := run(t, ctx, "error", chromedp.Text(chromedp.ID("token-error"))); !strings.Contains(msg, "unknown admin token") {
			t.Fatalf("token error %q", msg)
		}
		do(t, ctx, "sign in", chromedp.SendKeys(chromedp.ID("token"), adminSecret), chromedp.Click(chromedp.ID("sign-in")),
			chromedp.WaitVisible(chromedp.ID("sign-out")))
		if txt := pageText(t, ctx); !strings.Contains(txt, "Overview") || !strings.Contains(txt, "admin") {
			t.Fatalf("after sign-in: %q", txt)
		}
		// The cookie is HttpOnly: the page's script cannot read it.
		if c := run(t, ctx, "document.cookie", chromedp.Evaluate[string](`document.cookie`)); strings.Contains(c, "keymeter_console=") {
			t.Fatalf("session cookie visible to scripts: %q", c)
		}
		shot(t, ctx, "sign_in")
	})

	t.Run("create_key", func(t *testing.T) {
		ctx := tab(t, bctx)
		signIn(t, ctx, e.url, adminSecret)
		do(t, ctx, "new key form", chromedp.Navigate(e.url+"/console/keys/new"), chromedp.WaitVisible(chromedp.ID("f-project")),
			chromedp.SendKeys(chromedp.ID("f-project"), "proj_ui"),
			chromedp.SendKeys(chromedp.ID("f-name"), "checkout service"),
			chromedp.SendKeys(chromedp.ID("f-allowed_cidrs"), "not-a-network"),
			chromedp.SendKeys(chromedp.ID("f-rate_limit_per_s"), "fast"),
			chromedp.Click(chromedp.ID("create")),
			chromedp.WaitVisible(chromedp.ID("e-rate_limit_per_s")))
		// The API's error is next to its field and nothing typed is lost.
		if msg := run(t, ctx, "field error", chromedp.Text(chromedp.ID("e-rate_limit_per_s"))); msg != `rate_limit_per_s: want a number, got "fast"` {
			// The API's own wording, naming the field as the API names it.
			t.Fatalf("rate limit error %q", msg)
		}
		for id, want := range map[string]string{"f-project": "proj_ui", "f-name": "checkout service", "f-allowed_cidrs": "not-a-network", "f-rate_limit_per_s": "fast"} {
			if got := run(t, ctx, "value "+id, chromedp.Value(chromedp.ID(id))); got != want {
				t.Fatalf("after the error, %s = %q, want %q", id, got, want)
			}
		}
		shot(t, ctx, "create_key_error")
		do(t, ctx, "fix rate", chromedp.SetValue(chromedp.ID("f-rate_limit_per_s"), "50"), chromedp.Click(chromedp.ID("create")),
			chromedp.WaitVisible(chromedp.ID("e-allowed_cidrs")))
		if msg := run(t, ctx, "cidr error", chromedp.Text(chromedp.ID("e-allowed_cidrs"))); !strings.Contains(msg, "allowed_cidrs") {
			t.Fatalf("network error %q", msg)
		}
		do(t, ctx, "fix network", chromedp.SetValue(chromedp.ID("f-allowed_cidrs"), "0.0.0.0/0"), chromedp.Click(chromedp.ID("create")),
			chromedp.WaitVisible(chromedp.ID("secret")))
		secret = run(t, ctx, "secret", chromedp.Value(chromedp.ID("secret")))
		href := run(t, ctx, "key link", chromedp.AttributeValue(chromedp.ID("to-key"), "href"))
		keyID = strings.TrimPrefix(href.Value, "/console/keys/")
		if len(secret) < 20 || keyID == "" {
			t.Fatalf("secret %d chars, key %q", len(secret), keyID)
		}
		do(t, ctx, "copy", chromedp.Click(chromedp.ID("copy-secret")),
			chromedp.Poll[chromedp.Void](`document.getElementById("copy-status").textContent !== ""`))
		shot(t, ctx, "create_key_secret")
		// The secret is shown once: not on the key's page, not in the list.
		do(t, ctx, "key page", chromedp.Navigate(e.url+href.Value), chromedp.WaitVisible(chromedp.ID("key-status")))
		html := run(t, ctx, "html", chromedp.Evaluate[string](`document.documentElement.outerHTML`))
		if strings.Contains(html, secret) {
			t.Fatal("the key's page shows the secret")
		}
		if k := e.apiKey(keyID); k["name"] != "checkout service" || k["rate_limit_per_s"] != 50.0 {
			t.Fatalf("key as the API sees it: %v", k)
		}
		// Two more keys; the list's live search (htmx) narrows to one, and
		// cursor pages of one key walk all three.
		for _, name := range []string{"billing worker", "mobile app"} {
			do(t, ctx, "create "+name, chromedp.Navigate(e.url+"/console/keys/new"), chromedp.WaitVisible(chromedp.ID("f-project")),
				chromedp.SendKeys(chromedp.ID("f-project"), "proj_ui"), chromedp.SendKeys(chromedp.ID("f-name"), name),
				chromedp.Click(chromedp.ID("create")), chromedp.WaitVisible(chromedp.ID("secret")))
		}
		do(t, ctx, "live search", chromedp.Navigate(e.url+"/console/keys"), chromedp.WaitVisible(chromedp.CSS("#keys-table")),
			chromedp.SendKeys(chromedp.ID("q"), "checkout"),
			chromedp.Poll[chromedp.Void](`document.querySelectorAll("#keys-table tbody tr").length === 1 && location.search.includes("q=checkout")`))
		if txt := run(t, ctx, "results", chromedp.Text(chromedp.ID("keys-results"))); !strings.Contains(txt, "checkout service") {
			t.Fatalf("search results: %q", txt)
		}
		shot(t, ctx, "keys_search")
		seen := map[string]bool{}
		do(t, ctx, "first page", chromedp.Navigate(e.url+"/console/keys?project=proj_ui&limit=1"), chromedp.WaitVisible(chromedp.CSS("#keys-table")))
		for i := 0; ; i++ {
			id := run(t, ctx, "row", chromedp.Text(chromedp.CSS("#keys-table tbody tr td a")))
			if seen[id] || i > 5 {
				t.Fatalf("page %d repeats %s (seen %v)", i, id, seen)
			}
			seen[id] = true
			more := run(t, ctx, "next?", chromedp.Evaluate[bool](`!!document.querySelector("a[rel=next]")`))
			if !more {
				break
			}
			clickAndLoad(t, ctx, "a[rel=next]")
		}
		if len(seen) != 3 {
			t.Fatalf("cursor pages showed %d keys, want 3", len(seen))
		}
	})

	t.Run("usage_and_logs", func(t *testing.T) {
		if keyID == "" {
			t.Skip("create_key failed")
		}
		ctx := tab(t, bctx)
		signIn(t, ctx, e.url, adminSecret)
		now := time.Now().UTC().Add(-2 * time.Minute)
		var evs []event.Event
		for i := range 40 {
			o := event.OutcomeValid
			if i%5 == 0 {
				o = event.OutcomeRateLimited
			}
			evs = append(evs, event.Event{ID: fmt.Sprintf("ui-%d", i), Time: now.Add(time.Duration(i) * time.Second), Project: "proj_ui",
				KeyID: keyID, Outcome: o, ClientIP: "198.51.100.7", Country: "NL", Method: "GET", Route: "/v1/orders", Status: 200, CostUnits: 1})
		}
		if err := e.db.InsertEvents(context.Background(), "console-test", evs); err != nil {
			t.Fatal(err)
		}
		do(t, ctx, "key page", chromedp.Navigate(e.url+"/console/keys/"+keyID+"?granularity=minute"),
			chromedp.WaitVisible(chromedp.CSS("#key-logs table")),
			chromedp.WaitVisible(chromedp.CSS("#key-usage .uplot canvas")))
		logs := run(t, ctx, "logs", chromedp.Text(chromedp.ID("key-logs")))
		if !strings.Contains(logs, "/v1/orders") || !strings.Contains(logs, "198.51.100.7") || !strings.Contains(logs, "rate_limited") {
			t.Fatalf("key logs: %q", logs)
		}
		if c := run(t, ctx, "countries", chromedp.Text(chromedp.ID("key-countries"))); !strings.Contains(c, "NL: 40") {
			t.Fatalf("countries: %q", c)
		}
		total := run(t, ctx, "chart rows", chromedp.Evaluate[int](`JSON.parse(document.querySelector("[data-chart]").dataset.chart).series.reduce((a, s) => a + s.values.reduce((x, y) => x + y, 0), 0)`))
		if total != 40 {
			t.Fatalf("chart counts %d requests, want 40", total)
		}
		if p := run(t, ctx, "profile", chromedp.Text(chromedp.ID("key-profile"))); !strings.Contains(p, "NL 40") || !strings.Contains(p, "Not mature yet") {
			t.Fatalf("key profile: %q", p)
		}
		shot(t, ctx, "key_usage_logs")
		// The logs page with a filter, and a bad filter's error by its field.
		do(t, ctx, "logs page", chromedp.Navigate(e.url+"/console/logs?key="+keyID+"&outcome=rate_limited"), chromedp.WaitVisible(chromedp.CSS("table.logs")))
		if n := run(t, ctx, "rows", chromedp.Evaluate[int](`document.querySelectorAll("table.logs tbody tr").length`)); n != 8 {
			t.Fatalf("rate_limited rows = %d, want 8", n)
		}
		// Cursor pages of 15: 15, 15, 10, newest first, no event twice.
		do(t, ctx, "logs pages", chromedp.Navigate(e.url+"/console/logs?key="+keyID+"&limit=15"), chromedp.WaitVisible(chromedp.CSS("table.logs")))
		var times []string
		for page := 0; ; page++ {
			rows := run(t, ctx, "times", chromedp.Evaluate[[]string](`[...document.querySelectorAll("table.logs tbody tr td:first-child")].map(td => td.textContent)`))
			times = append(times, rows...)
			if page > 4 || !run(t, ctx, "older?", chromedp.Evaluate[bool](`!!document.querySelector("a[rel=next]")`)) {
				break
			}
			clickAndLoad(t, ctx, "a[rel=next]")
		}
		if len(times) != 40 || !sort.SliceIsSorted(times, func(i, j int) bool { return times[i] > times[j] }) {
			t.Fatalf("log pages gave %d events (want 40, newest first): %v", len(times), times)
		}
		do(t, ctx, "bad filter", chromedp.Navigate(e.url+"/console/logs?key="+keyID+"&status=abc"), chromedp.WaitVisible(chromedp.ID("e-status")))
		if v := run(t, ctx, "kept", chromedp.Value(chromedp.ID("f-status"))); v != "abc" {
			t.Fatalf("status field lost what was typed: %q", v)
		}
		shot(t, ctx, "logs_filter_error")
		// Live tail: an event stored after the page loaded shows up in it.
		do(t, ctx, "tail", chromedp.Navigate(e.url+"/console/logs?key="+keyID+"&tail=1"), chromedp.WaitVisible(chromedp.CSS("table.logs")))
		late := event.Event{ID: "ui-late", Time: time.Now().UTC(), Project: "proj_ui", KeyID: keyID, Outcome: event.OutcomeValid,
			ClientIP: "198.51.100.9", Country: "NL", Method: "POST", Route: "/v1/late-arrival", Status: 201}
		if err := e.db.InsertEvents(context.Background(), "console-test-late", []event.Event{late}); err != nil { // its own batch id: a batch id is inserted once
			t.Fatal(err)
		}
		do(t, ctx, "tail shows the new event", chromedp.Poll[chromedp.Void](`document.getElementById("log-results").textContent.includes("/v1/late-arrival")`))
	})

	t.Run("decision_evidence", func(t *testing.T) {
		if keyID == "" {
			t.Skip("create_key failed")
		}
		ctx := tab(t, bctx)
		signIn(t, ctx, e.url, adminSecret)
		d := store.Decision{ID: "dec-ui-1", Time: time.Now().UTC().Add(-time.Minute), RuleID: "impossible_travel", RuleVersion: 2, Mode: "enforce",
			Action: "revoke", Project: "proj_ui", KeyID: keyID, GroupKey: keyID, Reason: "5 countries in 60s",
			Evidence: `{"figures":{"countries":5,"window_s":60},"countries":["NL","BR","JP","US","ZA"]}`}
		if err := e.db.WriteDecisions(context.Background(), []store.Decision{d}); err != nil {
			t.Fatal(err)
		}
		do(t, ctx, "decisions", chromedp.Navigate(e.url+"/console/decisions"), chromedp.WaitVisible(chromedp.CSS("table.decisions a")),
			chromedp.Click(chromedp.CSS("table.decisions tbody tr td a")), chromedp.WaitVisible(chromedp.ID("evidence")))
		ev := run(t, ctx, "evidence", chromedp.Text(chromedp.ID("evidence")))
		if !strings.Contains(ev, `"countries": 5`) || !strings.Contains(ev, "ZA") {
			t.Fatalf("evidence: %q", ev)
		}
		if txt := pageText(t, ctx); !strings.Contains(txt, "impossible_travel") || !strings.Contains(txt, "/v1/orders") {
			t.Fatalf("decision page lacks the rule or the events around it: %q", txt)
		}
		shot(t, ctx, "decision_evidence")
		// The same page on a phone, in dark mode.
		if _, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}}); err != nil {
			t.Fatalf("emulate dark mode: %v", err)
		}
		do(t, ctx, "phone, dark", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile),
			chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("evidence")))
		bg := run(t, ctx, "background", chromedp.Evaluate[string](`getComputedStyle(document.body).backgroundColor`))
		if bg != "rgb(13, 17, 23)" {
			t.Fatalf("dark mode background %q", bg)
		}
		if w := run(t, ctx, "overflow", chromedp.Evaluate[int](`document.documentElement.scrollWidth - window.innerWidth`)); w > 0 {
			t.Fatalf("the page is %dpx wider than a phone's screen", w)
		}
		shot(t, ctx, "decision_phone_dark")
	})

	t.Run("read_role", func(t *testing.T) {
		if keyID == "" {
			t.Skip("create_key failed")
		}
		ctx := tab(t, bctx)
		signIn(t, ctx, e.url, readSecret)
		for _, p := range []string{"/console/keys", "/console/keys/" + keyID} {
			do(t, ctx, p, chromedp.Navigate(e.url+p), chromedp.WaitVisible(chromedp.ID("sign-out")))
			n := run(t, ctx, "write controls", chromedp.Evaluate[int](`document.querySelectorAll('form[method=post]:not([action="/console/logout"]), #new-key, #revoke, #suspend').length`))
			if n != 0 {
				t.Fatalf("%s: a read session sees %d write controls", p, n)
			}
		}
		shot(t, ctx, "read_role_key")
		// A forged write with a valid read session and its CSRF token: the
		// API refuses it.
		csrf := run(t, ctx, "csrf", chromedp.Value(chromedp.CSS(`form[action="/console/logout"] input[name=csrf]`)))
		if st := post(t, ctx, "/console/keys/"+keyID+"/suspend", "csrf="+csrf); st != http.StatusForbidden {
			t.Fatalf("read-role suspend: status %d, want 403", st)
		}
		if st := post(t, ctx, "/console/keys", "csrf="+csrf+"&project=proj_ui"); st != http.StatusForbidden {
			t.Fatalf("read-role create: status %d, want 403", st)
		}
		if k := e.apiKey(keyID); k["status"] != "active" {
			t.Fatalf("key after a refused write: %v", k["status"])
		}
	})

	t.Run("csrf", func(t *testing.T) {
		if keyID == "" {
			t.Skip("create_key failed")
		}
		ctx := tab(t, bctx)
		signIn(t, ctx, e.url, adminSecret)
		do(t, ctx, "key page", chromedp.Navigate(e.url+"/console/keys/"+keyID), chromedp.WaitVisible(chromedp.ID("suspend")))
		if st := post(t, ctx, "/console/keys/"+keyID+"/suspend", ""); st != http.StatusForbidden {
			t.Fatalf("suspend without a CSRF token: status %d, want 403", st)
		}
		if st := post(t, ctx, "/console/keys/"+keyID+"/suspend", "csrf=forged"); st != http.StatusForbidden {
			t.Fatalf("suspend with a wrong CSRF token: status %d, want 403", st)
		}
		if k := e.apiKey(keyID); k["status"] != "active" {
			t.Fatalf("key after refused writes: %v", k["status"])
		}
		// Rotate: the new secret is shown once, on the new key.
		do(t, ctx, "rotate", chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`),
			chromedp.SendKeys(chromedp.ID("f-grace_period"), "1h"), chromedp.Click(chromedp.ID("rotate")),
			chromedp.WaitVisible(chromedp.ID("secret")))
		if s2 := run(t, ctx, "new secret", chromedp.Value(chromedp.ID("secret"))); s2 == secret || len(s2) < 20 {
			t.Fatalf("rotation showed secret of %d chars (same as before: %v)", len(s2), s2 == secret)
		}
		do(t, ctx, "back to the old key", chromedp.Navigate(e.url+"/console/keys/"+keyID), chromedp.WaitVisible(chromedp.ID("suspend")))
		// Edit: a bad network gets the API's error by the field and keeps
		// what was typed; fixed, the change is saved.
		do(t, ctx, "edit", chromedp.Click(chromedp.CSS("#edit summary")), chromedp.WaitVisible(chromedp.ID("f-name")),
			chromedp.SetValue(chromedp.ID("f-name"), "checkout v2"), chromedp.SetValue(chromedp.ID("f-allowed_cidrs"), "10.0.0.0/8, nonsense"),
			chromedp.Click(chromedp.ID("save")), chromedp.WaitVisible(chromedp.ID("e-allowed_cidrs")))
		if v := run(t, ctx, "kept", chromedp.Value(chromedp.ID("f-name"))); v != "checkout v2" {
			t.Fatalf("name after the error: %q", v)
		}
		shot(t, ctx, "edit_key_error")
		do(t, ctx, "edit fixed", chromedp.SetValue(chromedp.ID("f-allowed_cidrs"), "10.0.0.0/8"), chromedp.Click(chromedp.ID("save")),
			chromedp.WaitVisible(chromedp.CSS(".flash")))
		if k := e.apiKey(keyID); k["name"] != "checkout v2" || fmt.Sprint(k["allowed_cidrs"]) != "[10.0.0.0/8]" || k["rate_limit_per_s"] != 50.0 {
			t.Fatalf("after edit: %v", k)
		}
		// The same write from the page's own form works: suspend, resume,
		// then revoke with a reason (a missing reason is an error by the field).
		do(t, ctx, "suspend", chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`), chromedp.Click(chromedp.ID("suspend")),
			chromedp.WaitVisible(chromedp.ID("resume")))
		if k := e.apiKey(keyID); k["status"] != "suspended" {
			t.Fatalf("after suspend: %v", k["status"])
		}
		do(t, ctx, "resume", chromedp.Click(chromedp.ID("resume")), chromedp.WaitVisible(chromedp.ID("suspend")),
			chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`),
			chromedp.Click(chromedp.ID("revoke")), chromedp.WaitVisible(chromedp.ID("e-reason")))
		do(t, ctx, "revoke", chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`),
			chromedp.SendKeys(chromedp.ID("f-reason"), "found in a public gist"), chromedp.Click(chromedp.ID("revoke")),
			chromedp.WaitVisible(chromedp.ID("revoke-reason")))
		if k := e.apiKey(keyID); k["status"] != "revoked" || k["revoke_reason"] != "found in a public gist" {
			t.Fatalf("after revoke: %v %v", k["status"], k["revoke_reason"])
		}
		shot(t, ctx, "revoked_key")
	})

	t.Run("backtest_timeline", func(t *testing.T) {
		ctx := tab(t, bctx)
		signIn(t, ctx, e.url, adminSecret)
		now := time.Now().UTC().Truncate(time.Minute)
		storeBurst(t, e, "key_ui_busy", now.Add(-4*time.Hour), now.Add(-2*time.Hour))
		from, to := now.Add(-6*time.Hour).Format("2006-01-02T15:04"), now.Add(time.Minute).Format("2006-01-02T15:04")
		// A rule with a bad duration: the problem is shown by the text box
		// with its file and line, and the text stays as typed.
		bad := strings.Replace(busyRule, "window: 1m", "window: 1 minute", 1)
		do(t, ctx, "backtest form", chromedp.Navigate(e.url+"/console/rules"), chromedp.WaitVisible(chromedp.ID("open-backtest")))
		clickAndLoad(t, ctx, "#open-backtest")
		do(t, ctx, "bad rule", chromedp.WaitVisible(chromedp.ID("f-rules")),
			chromedp.Click(chromedp.ID("src-file")), chromedp.SetValue(chromedp.ID("f-rules"), bad),
			chromedp.SetValue(chromedp.ID("f-from"), from), chromedp.SetValue(chromedp.ID("f-to"), to),
			chromedp.Click(chromedp.ID("run-backtest")), chromedp.WaitVisible(chromedp.CSS("#rule-problems li")))
		if p := run(t, ctx, "problems", chromedp.Text(chromedp.ID("rule-problems"))); !strings.Contains(p, "pasted.yaml:10") || !strings.Contains(p, "aggregate.window") {
			t.Fatalf("problems shown: %q", p)
		}
		if v := run(t, ctx, "kept", chromedp.Value(chromedp.ID("f-rules"))); v != bad {
			t.Fatalf("the rule text was not kept: %q", v)
		}
		// The problem's file:line selects that line of the text.
		do(t, ctx, "go to line", chromedp.Click(chromedp.CSS("#rule-problems [data-goto-line]")))
		if sel := run(t, ctx, "selection", chromedp.Evaluate[string](`(t => t.value.substring(t.selectionStart, t.selectionEnd))(document.getElementById("f-rules"))`)); sel != "  window: 1 minute" {
			t.Fatalf("clicking the problem selected %q, want line 10", sel)
		}
		shot(t, ctx, "backtest_lint_error")
		do(t, ctx, "good rule", chromedp.SetValue(chromedp.ID("f-rules"), busyRule), chromedp.Click(chromedp.ID("run-backtest")),
			chromedp.WaitVisible(chromedp.CSS("#backtest-timeline .uplot canvas")))
		total := run(t, ctx, "timeline", chromedp.Evaluate[int](`JSON.parse(document.querySelector("#backtest-timeline [data-chart]").dataset.chart).series.reduce((a, s) => a + s.values.reduce((x, y) => x + y, 0), 0)`))
		if total != 2 {
			t.Fatalf("timeline counts %d would-be decisions, want 2", total)
		}
		if rows := run(t, ctx, "decisions", chromedp.Text(chromedp.ID("backtest-decisions"))); strings.Count(rows, "key_ui_busy") != 4 { // key and group per row
			t.Fatalf("decision table: %q", rows)
		}
		shot(t, ctx, "backtest_timeline")
	})

	t.Run("live_overview", func(t *testing.T) {
		ctx := tab(t, bctx)
		signIn(t, ctx, e.url, adminSecret)
		do(t, ctx, "overview streams", chromedp.Navigate(e.url+"/console/"),
			chromedp.Poll[chromedp.Void](`(document.getElementById("live").dataset.updates|0) >= 1`))
		// Events published on the bus (as a verifier does) show up as a rate.
		for i := 0; ; i++ {
			publishValid(t, e, 200, fmt.Sprintf("ui-%d", i))
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := chromedp.Run(sctx, chromedp.Poll[chromedp.Void](`document.getElementById("live-rate").textContent.includes("valid")`))
			cancel()
			if err == nil {
				break
			}
			if i == 10 {
				t.Fatalf("the overview shows no rate for published events: %q", run(t, ctx, "rate", chromedp.Text(chromedp.ID("live-rate"))))
			}
		}
		do(t, ctx, "live chart", chromedp.WaitVisible(chromedp.CSS("#live-chart .uplot canvas")))
		n0 := run(t, ctx, "updates", chromedp.Evaluate[int](`document.getElementById("live").dataset.updates|0`))
		do(t, ctx, "more updates", chromedp.Poll[chromedp.Void](fmt.Sprintf(`(document.getElementById("live").dataset.updates|0) > %d`, n0)))
		if st := run(t, ctx, "status", chromedp.Text(chromedp.ID("live-status"))); !strings.Contains(st, "Live") {
			t.Fatalf("live status %q", st)
		}
		shot(t, ctx, "live_overview")
	})

	t.Run("sign_out", func(t *testing.T) {
		ctx := tab(t, bctx)
		signIn(t, ctx, e.url, adminSecret)
		do(t, ctx, "sign out", chromedp.Click(chromedp.ID("sign-out")), chromedp.WaitVisible(chromedp.ID("token")))
		if txt := pageText(t, ctx); !strings.Contains(txt, "signed out") {
			t.Fatalf("after sign-out: %q", txt)
		}
		do(t, ctx, "keys after sign-out", chromedp.Navigate(e.url+"/console/keys"), chromedp.WaitVisible(chromedp.ID("token")))
		if loc := run(t, ctx, "location", chromedp.Location()); !strings.Contains(loc, "/console/login") {
			t.Fatalf("after sign-out /console/keys led to %s", loc)
		}
		shot(t, ctx, "signed_out")
	})
	_ = io.Discard
}
