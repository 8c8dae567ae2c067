// Package storetest is the conformance suite every store backend passes:
// storetest.Run(t, factory). Each test gets a fresh database, so tests run
// in parallel.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// Factory opens a store on the named database (created by Migrate if
// missing). Opening the same database again must see the same data.
type Factory func(t *testing.T, database string) store.Store

// migrator is implemented by store.DB; the suite uses it to test a failing migration.
type migrator interface {
	MigrateWith(ctx context.Context, migs []store.Migration) ([]int, error)
	MigrationStatusWith(ctx context.Context, migs []store.Migration) ([]store.MigrationState, error)
}

var seq atomic.Int64

// fresh opens a migrated store on a new database.
func fresh(t *testing.T, f Factory) (store.Store, string) {
	t.Helper()
	db := fmt.Sprintf("t_%d_%d", time.Now().UnixNano()%1e9, seq.Add(1))
	s := f(t, db)
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return s, db
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// Run runs the whole suite.
func Run(t *testing.T, f Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, Factory)
	}{
		{"ExactlyOnce", testExactlyOnce},
		{"Intents", testIntents},
		{"Usage", testUsage},
		{"Logs", testLogs},
		{"LogsPagination", testLogsPagination},
		{"QuotaUsage", testQuota},
		{"Baselines", testBaselines},
		{"Decisions", testDecisions},
		{"Audit", testAudit},
		{"KeyMirror", testKeys},
		{"Migrations", testMigrations},
		{"FailingMigration", testFailingMigration},
		{"BadFilters", testBadFilters},
		{"HostileStrings", testHostileStrings},
		{"Retention", testRetention},
		{"ScanEvents", testScanEvents},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, f)
		})
	}
}

// base is midnight UTC a few days ago: recent enough for the raw events'
// retention, aligned so buckets are predictable.
var base = time.Now().UTC().Truncate(24 * time.Hour).Add(-5 * 24 * time.Hour)

// Events generates n deterministic events over span, starting at start,
// spread over keys k0..k(keys-1) of project p1 (and anonymous ones).
func Events(prefix string, n int, start time.Time, span time.Duration, keys int) []event.Event {
	routes := []string{"/v1/items", "/v1/orders", "/v1/users"}
	countries := []string{"DE", "US", "FR", "JP"}
	outcomes := []event.Outcome{event.OutcomeValid, event.OutcomeValid, event.OutcomeValid, event.OutcomeRateLimited, event.OutcomeRevoked}
	out := make([]event.Event, n)
	for i := range out {
		key := ""
		if keys > 0 && i%10 != 9 {
			key = fmt.Sprintf("key_%d", i%keys)
		}
		status := uint16(200)
		o := outcomes[i%len(outcomes)]
		if key == "" {
			o = event.OutcomeMissing
			status = 401
		} else if o == event.OutcomeRateLimited {
			status = 429
		} else if o == event.OutcomeRevoked {
			status = 401
		}
		out[i] = event.Event{
			ID:         fmt.Sprintf("%s-%08d", prefix, i),
			Time:       start.Add(time.Duration(int64(span) / int64(n) * int64(i))).Truncate(time.Millisecond),
			Project:    "p1",
			KeyID:      key,
			Outcome:    o,
			ClientIP:   fmt.Sprintf("10.%d.%d.%d", i%3, (i/3)%4, i%50),
			Country:    countries[i%len(countries)],
			ASN:        uint32(64500 + i%7),
			Method:     "GET",
			Host:       "api.example.com",
			Route:      routes[i%len(routes)],
			Status:     status,
			LatencyUS:  uint32(1000 + i%900),
			BytesIn:    uint64(100 + i%13),
			BytesOut:   uint64(1000 + i%101),
			UserAgent:  "curl/8",
			VerifierID: "v1",
			CostUnits:  uint32(1 + i%3),
		}
	}
	return out
}

func mustCount(t *testing.T, s store.Store, table string) uint64 {
	t.Helper()
	n, err := s.Count(ctx(t), table)
	if err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

func totalUsage(t *testing.T, s store.Store, g store.Granularity) uint64 {
	t.Helper()
	pts, err := s.Usage(ctx(t), store.UsageQuery{Project: "p1", From: base.Add(-24 * time.Hour), To: base.Add(7 * 24 * time.Hour), Granularity: g})
	if err != nil {
		t.Fatalf("usage: %v", err)
	}
	var n uint64
	for _, p := range pts {
		n += p.Requests
	}
	return n
}

func testExactlyOnce(t *testing.T, f Factory) {
	s, db := fresh(t, f)
	c := ctx(t)
	a := Events("a", 3000, base, time.Hour, 5)
	b := Events("b", 2000, base.Add(time.Hour), time.Hour, 5)
	for i := 0; i < 2; i++ {
		if err := s.InsertEvents(c, "part0:0-2999", a); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.InsertEvents(c, "part0:3000-4999", b); err != nil {
		t.Fatal(err)
	}
	if n := mustCount(t, s, "requests"); n != 5000 {
		t.Fatalf("requests = %d after a duplicate insert, want 5000", n)
	}
	if n := totalUsage(t, s, store.Minute); n != 5000 {
		t.Fatalf("per-minute rollup counts %d requests, want 5000", n)
	}
	if n := totalUsage(t, s, store.Day); n != 5000 {
		t.Fatalf("per-day rollup counts %d requests, want 5000", n)
	}
	// A replay after a restart: same token, dropped.
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = f(t, db)
	defer s.Close(context.Background())
	if err := s.InsertEvents(c, "part0:0-2999", a); err != nil {
		t.Fatal(err)
	}
	if n := mustCount(t, s, "requests"); n != 5000 {
		t.Fatalf("requests = %d after a replay across reopen, want 5000", n)
	}
	if n := totalUsage(t, s, store.Hour); n != 5000 {
		t.Fatalf("rollup counts %d after replay across reopen, want 5000", n)
	}
	if err := s.InsertEvents(c, "bad token with spaces", a[:1]); !errors.Is(err, store.ErrInvalidQuery) {
		t.Fatalf("token with spaces: err = %v, want ErrInvalidQuery", err)
	}
	checkStoredEventIDs(t, s, append(a[:len(a):len(a)], b...))
}

func testIntents(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	in := []store.Intent{
		{Consumer: "agg", Partition: "3", First: 100, Last: 199, Token: "agg/3/100-199"},
		{Consumer: "agg", Partition: "1", First: 0, Last: 9, Token: "agg/1/0-9"},
		{Consumer: "other", Partition: "1", First: 0, Last: 9, Token: "other/1/0-9"},
	}
	for _, x := range in {
		if err := s.RecordIntent(c, x); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Intents(c, "agg")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Partition != "1" || got[1].First != 100 || got[1].Last != 199 || got[1].Token != "agg/3/100-199" || got[0].State != store.IntentPending {
		t.Fatalf("intents = %+v", got)
	}
	if err := s.ClearIntent(c, "agg", "1", "agg/1/0-9"); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Intents(c, "agg")
	if len(got) != 1 || got[0].Partition != "3" {
		t.Fatalf("after clear: intents = %+v", got)
	}
	if err := s.ClearIntent(c, "agg", "9", "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("clear unknown intent: err = %v, want ErrNotFound", err)
	}
	if err := s.RecordIntent(c, store.Intent{Consumer: "agg", Token: "x", First: 5, Last: 1}); !errors.Is(err, store.ErrInvalidQuery) {
		t.Fatalf("first > last: err = %v", err)
	}
	// The intents of one insert, recorded and cleared in one statement each;
	// a value with a quote and a tab travels intact.
	batch := []store.Intent{
		{Consumer: "agg", Partition: "events/0", First: 1 << 40, Last: 1<<40 + 7, Token: "agg/t'1\tx"},
		{Consumer: "agg", Partition: "events/5", First: 3, Last: 3, Token: "agg/t'1\tx"},
	}
	if err := s.RecordIntents(c, batch); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Intents(c, "agg")
	if len(got) != 3 || got[0].Partition != "3" || got[1].Partition != "events/0" || got[1].First != 1<<40 || got[1].Last != 1<<40+7 ||
		got[1].Token != batch[0].Token || got[2].Partition != "events/5" || got[2].State != store.IntentPending {
		t.Fatalf("after RecordIntents: intents = %+v", got)
	}
	// The next insert's intents carry the clear of the last one's first.
	done0 := batch[0]
	done0.State = store.IntentDone
	next := store.Intent{Consumer: "agg", Partition: "events/0", First: 1<<40 + 8, Last: 1<<40 + 9, Token: "agg/t2"}
	if err := s.RecordIntents(c, []store.Intent{done0, next}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Intents(c, "agg")
	if len(got) != 3 || got[0].Partition != "3" || got[1].Token != "agg/t2" || got[2].Partition != "events/5" {
		t.Fatalf("after RecordIntents with a done intent: intents = %+v", got)
	}
	if err := s.ClearIntents(c, []store.Intent{batch[1], next}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Intents(c, "agg")
	if len(got) != 1 || got[0].Partition != "3" {
		t.Fatalf("after ClearIntents: intents = %+v", got)
	}
	if err := s.RecordIntents(c, []store.Intent{batch[0], {Consumer: "agg", Token: "y", First: 2, Last: 1}}); !errors.Is(err, store.ErrInvalidQuery) {
		t.Fatalf("a batch with first > last: err = %v", err)
	}
}

func testUsage(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	// Two days and a bit.
	start := base.Add(-2 * time.Hour)
	ev := Events("u", 6000, start, 50*time.Hour, 4)
	if err := s.InsertEvents(c, "u", ev); err != nil {
		t.Fatal(err)
	}
	type want struct{ req, allowed, cost, bytesIn uint64 }
	trunc := map[store.Granularity]func(time.Time) time.Time{
		store.Minute: func(t time.Time) time.Time { return t.Truncate(time.Minute) },
		store.Hour:   func(t time.Time) time.Time { return t.Truncate(time.Hour) },
		store.Day:    func(t time.Time) time.Time { return t.Truncate(24 * time.Hour) },
		store.Month: func(t time.Time) time.Time {
			return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		},
	}
	for g, tr := range trunc {
		exp := map[time.Time]*want{}
		for _, e := range ev {
			if e.KeyID != "key_1" {
				continue
			}
			w := exp[tr(e.Time)]
			if w == nil {
				w = &want{}
				exp[tr(e.Time)] = w
			}
			w.req++
			w.bytesIn += e.BytesIn
			w.cost += uint64(e.CostUnits)
			if e.Outcome == event.OutcomeValid {
				w.allowed++
			}
		}
		pts, err := s.Usage(c, store.UsageQuery{KeyID: "key_1", From: start.Add(-time.Hour), To: start.Add(60 * time.Hour), Granularity: g})
		if err != nil {
			t.Fatalf("%s: %v", g, err)
		}
		if len(pts) != len(exp) {
			t.Fatalf("%s: %d buckets, want %d", g, len(pts), len(exp))
		}
		for _, p := range pts {
			w := exp[p.Start]
			if w == nil || p.Requests != w.req || p.Allowed != w.allowed || p.CostUnits != w.cost || p.BytesIn != w.bytesIn {
				t.Fatalf("%s bucket %s: got %+v, want %+v", g, p.Start, p, w)
			}
			if p.UniqueIPs == 0 || p.Countries == 0 {
				t.Fatalf("%s bucket %s: no unique IPs/countries: %+v", g, p.Start, p)
			}
		}
	}
	// Breakdown by outcome and country over the project, per day.
	pts, err := s.Usage(c, store.UsageQuery{Project: "p1", From: start, To: start.Add(60 * time.Hour), Granularity: store.Month, GroupBy: []string{"outcome", "country"}})
	if err != nil {
		t.Fatal(err)
	}
	exp := map[string]uint64{}
	ips := map[string]bool{}
	for _, e := range ev {
		exp[e.Time.Format("2006-01")+"/"+e.Outcome.String()+"/"+e.Country]++
		ips[e.ClientIP] = true
	}
	got := map[string]uint64{}
	for _, p := range pts {
		if p.Route != "" {
			t.Fatalf("route set without group by route: %+v", p)
		}
		got[p.Start.Format("2006-01")+"/"+p.Outcome+"/"+p.Country] += p.Requests
	}
	if fmt.Sprint(got) != fmt.Sprint(exp) {
		t.Fatalf("by outcome, country:\n got %v\nwant %v", got, exp)
	}
	// Unique IPs over the whole range, one bucket per month, grouped by nothing.
	pts, err = s.Usage(c, store.UsageQuery{Project: "p1", From: start, To: start.Add(time.Hour), Granularity: store.Hour, GroupBy: []string{"route"}})
	if err != nil || len(pts) != 3 || pts[0].Route == "" {
		t.Fatalf("by route: %v %+v", err, pts)
	}
	pts, _ = s.Usage(c, store.UsageQuery{Project: "p1", From: base.Add(-365 * 24 * time.Hour), To: base.Add(24 * time.Hour), Granularity: store.Month})
	var totalIPs uint64
	for _, p := range pts {
		totalIPs = max(totalIPs, p.UniqueIPs)
	}
	if totalIPs < uint64(len(ips))*9/10 || totalIPs > uint64(len(ips))*11/10 {
		t.Fatalf("unique IPs per month up to %d, want about %d", totalIPs, len(ips))
	}
}

func insert(t *testing.T, s store.Store, token string, ev []event.Event) {
	t.Helper()
	if err := s.InsertEvents(ctx(t), token, ev); err != nil {
		t.Fatal(err)
	}
}

func testLogs(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	ev := Events("l", 2000, base, 2*time.Hour, 6)
	ev[7].Project = "p2"
	// An unknown address (empty, as POST /v1/events accepts it) matches no
	// address or network filter and fails none; an IPv6 one only IPv6 networks.
	ev[3].ClientIP, ev[11].ClientIP, ev[13].ClientIP = "", "2001:db8::5", "::ffff:10.1.0.9"
	insert(t, s, "l", ev)
	isV4 := func(e event.Event) bool { a, err := netip.ParseAddr(e.ClientIP); return err == nil && a.Is4() }
	inNet := func(p string) func(e event.Event) bool {
		n := netip.MustParsePrefix(p)
		return func(e event.Event) bool { a, err := netip.ParseAddr(e.ClientIP); return err == nil && n.Contains(a) }
	}
	cidr := netip.MustParsePrefix("10.1.0.0/16")
	cases := []struct {
		name  string
		q     url.Values
		match func(e event.Event) bool
	}{
		{"key", url.Values{"key": {"key_3"}}, func(e event.Event) bool { return e.KeyID == "key_3" }},
		{"project", url.Values{"project": {"p2"}}, func(e event.Event) bool { return e.Project == "p2" }},
		{"ip", url.Values{"ip": {"10.2.1.17"}}, func(e event.Event) bool { return e.ClientIP == "10.2.1.17" }},
		{"cidr", url.Values{"ip": {"10.1.0.0/16"}}, func(e event.Event) bool { return isV4(e) && cidr.Contains(netip.MustParseAddr(e.ClientIP)) }},
		{"all IPv4", url.Values{"ip": {"0.0.0.0/0"}}, isV4},
		{"IPv6 network", url.Values{"ip": {"2001:db8::/32"}}, inNet("2001:db8::/32")},
		{"all IPv6", url.Values{"ip": {"::/0"}}, func(e event.Event) bool { return strings.Contains(e.ClientIP, ":") }},
		{"status range", url.Values{"status": {"400-499"}}, func(e event.Event) bool { return e.Status >= 400 && e.Status < 500 }},
		{"status", url.Values{"status": {"429"}}, func(e event.Event) bool { return e.Status == 429 }},
		{"status class", url.Values{"status": {"4xx"}}, func(e event.Event) bool { return e.Status >= 400 && e.Status < 500 }},
		{"outcome", url.Values{"outcome": {"revoked"}}, func(e event.Event) bool { return e.Outcome == event.OutcomeRevoked }},
		{"route", url.Values{"route": {"/v1/orders"}}, func(e event.Event) bool { return e.Route == "/v1/orders" }},
		{"country", url.Values{"country": {"JP"}}, func(e event.Event) bool { return e.Country == "JP" }},
		{"time", url.Values{"from": {base.Add(30 * time.Minute).Format(time.RFC3339)}, "to": {base.Add(40 * time.Minute).Format(time.RFC3339)}},
			func(e event.Event) bool {
				return !e.Time.Before(base.Add(30*time.Minute)) && e.Time.Before(base.Add(40*time.Minute))
			}},
		{"combined", url.Values{"project": {"p1"}, "key": {"key_2"}, "country": {"DE"}, "status": {"200"}},
			func(e event.Event) bool {
				return e.Project == "p1" && e.KeyID == "key_2" && e.Country == "DE" && e.Status == 200
			}},
	}
	for _, tc := range cases {
		q, err := store.ParseLogQuery(tc.q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		q.Limit = 10000
		page, err := s.Logs(c, q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var want []string
		for _, e := range ev {
			if tc.match(e) {
				want = append(want, e.ID)
			}
		}
		var got []string
		for _, e := range page.Events {
			got = append(got, e.ID)
		}
		sort.Strings(want)
		slices.Reverse(want) // newest first: ids grow with time
		if len(want) == 0 || !slices.Equal(got, want) {
			t.Fatalf("%s: got %d events, want %d (first got %v, want %v)", tc.name, len(got), len(want), head(got), head(want))
		}
	}
	// A reversed status range matches nothing (and is no error).
	if q, err := store.ParseLogQuery(url.Values{"status": {"599-500"}}); err != nil {
		t.Fatalf("reversed range: %v", err)
	} else if page, err := s.Logs(c, q); err != nil || len(page.Events) != 0 {
		t.Fatalf("reversed range: %d events, %v", len(page.Events), err)
	}
	// The full event round-trips.
	q, _ := store.ParseLogQuery(url.Values{"key": {ev[1].KeyID}, "limit": {"10000"}})
	page, _ := s.Logs(c, q)
	for _, e := range page.Events {
		if e.ID == ev[1].ID {
			if e != ev[1] {
				t.Fatalf("round trip:\n got %+v\nwant %+v", e, ev[1])
			}
			return
		}
	}
	t.Fatal("event 1 not found")
}

func head(s []string) []string { return s[:min(3, len(s))] }

func testLogsPagination(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	ev := Events("pg", 1000, base, 10*time.Second, 3) // several events per millisecond
	insert(t, s, "pg", ev)
	var got []string
	q := store.LogQuery{Project: "p1", Limit: 77}
	pages := 0
	for {
		page, err := s.Logs(c, q)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range page.Events {
			got = append(got, e.ID)
		}
		if page.Next == "" {
			break
		}
		if len(page.Events) != 77 {
			t.Fatalf("page %d has %d events, want 77", pages, len(page.Events))
		}
		q.Cursor = page.Next
	}
	if len(got) != 1000 || pages != 13 {
		t.Fatalf("paged %d events in %d pages, want 1000 in 13", len(got), pages)
	}
	want := make([]string, 0, 1000)
	for _, e := range ev {
		want = append(want, e.ID)
	}
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		t.Fatal("pages are not newest first without gaps or duplicates")
	}
}

func testQuota(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	ev := Events("q", 3000, base.Add(-36*time.Hour), 72*time.Hour, 3)
	insert(t, s, "q", ev)
	for _, start := range []time.Time{base, base.Add(90 * time.Minute), base.Add(-30*time.Hour - 7*time.Minute)} {
		var want store.QuotaUsage
		for _, e := range ev {
			if e.KeyID == "key_2" && !e.Time.Before(start.Truncate(time.Minute)) {
				want.Requests++
				if e.Outcome == event.OutcomeValid {
					want.Allowed++
					want.CostUnits += uint64(e.CostUnits)
				}
			}
		}
		got, err := s.QuotaUsage(c, "key_2", start)
		if err != nil {
			t.Fatal(err)
		}
		if got != want || want.Requests == 0 {
			t.Fatalf("quota since %s: got %+v, want %+v", start, got, want)
		}
	}
}

func testBaselines(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	ev := Events("bl", 2400, base, 2*time.Hour, 4) // 20 events per minute
	insert(t, s, "bl", ev)
	bs, err := s.Baselines(c, store.BaselineQuery{Project: "p1", From: base, To: base.Add(4 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 4 {
		t.Fatalf("%d baselines, want 4 keys: %+v", len(bs), bs)
	}
	perKey := map[string]uint64{}
	for _, e := range ev {
		if e.KeyID != "" {
			perKey[e.KeyID]++
		}
	}
	for _, b := range bs {
		if b.Requests != perKey[b.KeyID] || b.ActiveMinutes != 120 {
			t.Fatalf("baseline %+v: want %d requests over 120 active minutes", b, perKey[b.KeyID])
		}
		mean := float64(perKey[b.KeyID]) / 240
		if b.MeanPerMinute < mean*0.99 || b.MeanPerMinute > mean*1.01 || b.MaxPerMinute < 4 || b.P99PerMinute < 4 {
			t.Fatalf("baseline %+v: mean want %.2f", b, mean)
		}
	}
	one, err := s.Baselines(c, store.BaselineQuery{KeyID: "key_0", From: base, To: base.Add(time.Hour)})
	if err != nil || len(one) != 1 || one[0].KeyID != "key_0" {
		t.Fatalf("one key: %v %+v", err, one)
	}
}

func testDecisions(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	ds := []store.Decision{
		{ID: "d1", Time: base, RuleID: "leaked-key", RuleVersion: 2, Mode: "enforce", Action: "revoke", Project: "p1", KeyID: "key_1", Reason: "40 countries in 5m", Evidence: `{"countries":40}`},
		{ID: "d2", Time: base.Add(time.Minute), RuleID: "burst", RuleVersion: 1, Mode: "dry_run", Action: "throttle", Project: "p1", KeyID: "key_2", ClientIP: "10.0.0.1", GroupKey: "key_2"},
		{ID: "d3", Time: base.Add(2 * time.Minute), RuleID: "burst", RuleVersion: 1, Mode: "enforce", Action: "alert", Project: "p2", KeyID: "key_9"},
	}
	if err := s.WriteDecisions(c, ds); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteDecisions(c, ds[:1]); err != nil { // a retried write
		t.Fatal(err)
	}
	all, err := s.Decisions(c, store.DecisionQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all[0].ID != "d3" || all[2] != ds[0] {
		t.Fatalf("decisions = %+v", all)
	}
	burst, _ := s.Decisions(c, store.DecisionQuery{RuleID: "burst", Project: "p1"})
	if len(burst) != 1 || burst[0] != ds[1] {
		t.Fatalf("by rule and project = %+v", burst)
	}
	byKey, _ := s.Decisions(c, store.DecisionQuery{KeyID: "key_1", From: base, To: base.Add(time.Minute)})
	if len(byKey) != 1 || byKey[0].ID != "d1" {
		t.Fatalf("by key and time = %+v", byKey)
	}
}

func testKeys(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	k := store.KeyRecord{ID: "key_a", Project: "p1", Name: "prod", Owner: "team-x", Env: "live", Display: "km_live_", State: "active",
		Created: base, Scopes: []string{"read", "it's \\ odd"}, AllowedCIDRs: []string{"10.0.0.0/8"}, RateLimit: 100, MonthlyQuota: 1e6, Metadata: `{"tier":"gold"}`, Version: 1}
	k2 := k
	k2.ID, k2.Version, k2.Scopes = "key_b", 1, nil
	if err := s.UpsertKeys(c, []store.KeyRecord{k, k2}); err != nil {
		t.Fatal(err)
	}
	rev := k
	rev.State, rev.Revoked, rev.RevokeReason, rev.Version = "revoked", base.Add(time.Hour), "leaked", 2
	if err := s.UpsertKeys(c, []store.KeyRecord{rev}); err != nil {
		t.Fatal(err)
	}
	old := k
	old.Version = 1 // a late, older update must not win
	if err := s.UpsertKeys(c, []store.KeyRecord{old}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Key(c, "key_a")
	if err != nil {
		t.Fatal(err)
	}
	if !keysEqual(got, rev) {
		t.Fatalf("key_a:\n got %+v\nwant %+v", got, rev)
	}
	if _, err := s.Key(c, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing key: err = %v", err)
	}
	list, err := s.Keys(c, "p1")
	if err != nil || len(list) != 2 || list[1].ID != "key_b" || len(list[1].Scopes) != 0 {
		t.Fatalf("keys(p1) = %v %+v", err, list)
	}
}

func keysEqual(a, b store.KeyRecord) bool {
	return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b)
}

func testMigrations(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	again, err := s.Migrate(c)
	if err != nil || len(again) != 0 {
		t.Fatalf("second migrate applied %v, err %v; want nothing", again, err)
	}
	st, err := s.MigrationStatus(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != len(store.Migrations()) || len(st) < 3 {
		t.Fatalf("status = %+v", st)
	}
	for _, m := range st {
		if !m.Applied || m.AppliedAt.IsZero() {
			t.Fatalf("migration %d not applied: %+v", m.Version, m)
		}
	}
	if n := mustCount(t, s, "schema_migrations"); n < uint64(len(st)) {
		t.Fatalf("schema_migrations has %d rows", n)
	}
}

func testFailingMigration(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	m, ok := s.(migrator)
	if !ok {
		t.Fatalf("%T does not offer MigrateWith", s)
	}
	c := ctx(t)
	migs := append(store.Migrations(), store.Migration{Version: 9999, Name: "broken", Statements: []string{
		"CREATE TABLE IF NOT EXISTS {db}.fine (a UInt8) ENGINE = MergeTree ORDER BY a",
		"ALTER TABLE {db}.no_such_table ADD COLUMN b UInt8",
	}})
	_, err := m.MigrateWith(c, migs)
	var me *store.MigrationError
	if !errors.As(err, &me) || me.Version != 9999 || me.Statement != 2 || !strings.Contains(err.Error(), "no_such_table") {
		t.Fatalf("err = %v, want a MigrationError naming migration 9999 statement 2", err)
	}
	st, err := m.MigrationStatusWith(c, migs)
	if err != nil {
		t.Fatal(err)
	}
	last := st[len(st)-1]
	if last.Version != 9999 || last.Applied {
		t.Fatalf("failed migration recorded: %+v", last)
	}
	// Fixed and re-run: applies, statement 1 being idempotent.
	migs[len(migs)-1].Statements[1] = "ALTER TABLE {db}.fine ADD COLUMN IF NOT EXISTS b UInt8"
	applied, err := m.MigrateWith(c, migs)
	if err != nil || !slices.Equal(applied, []int{9999}) {
		t.Fatalf("re-run: applied %v, err %v", applied, err)
	}
}

func testBadFilters(t *testing.T, f Factory) {
	bad := []struct {
		q    url.Values
		want string
	}{
		{url.Values{"colour": {"red"}}, `unknown field`},
		{url.Values{"status": {"abc"}}, `"status"`},
		{url.Values{"status": {"700"}}, `"status"`},
		{url.Values{"ip": {"10.0.0.300"}}, `"ip"`},
		{url.Values{"outcome": {"nope"}}, `"outcome"`},
		{url.Values{"country": {"germany"}}, `"country"`},
		{url.Values{"from": {"yesterday"}}, `"from"`},
		{url.Values{"limit": {"ten"}}, `"limit"`},
		{url.Values{"cursor": {"!!"}}, `"cursor"`},
		{url.Values{"limit": {"0"}}, `"limit"`},
		{url.Values{"status": {"500-"}}, `"status"`},
		{url.Values{"status": {"500-700"}}, `"status"`},
		{url.Values{"from": {"9223372036854775807"}}, `"from"`},
		{url.Values{"from": {"1000-01-01T00:00:00Z"}}, `years 1971 to 2261`},
		{url.Values{"to": {"9999-12-31T00:00:00Z"}}, `years 1971 to 2261`},
	}
	for _, b := range bad {
		_, err := store.ParseLogQuery(b.q)
		if !errors.Is(err, store.ErrInvalidQuery) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("ParseLogQuery(%v): err = %v, want ErrInvalidQuery mentioning %s", b.q, err, b.want)
		}
	}
	ubad := []url.Values{
		{"key": {"k"}, "granularity": {"week"}, "from": {"1700000000"}},
		{"key": {"k"}, "group_by": {"user_agent"}, "from": {"1700000000"}},
		{"key": {"k"}, "foo": {"1"}},
		{"key": {"k"}, "from": {"9999-01-01T00:00:00Z"}},
	}
	for _, v := range ubad {
		if _, err := store.ParseUsageQuery(v); !errors.Is(err, store.ErrInvalidQuery) {
			t.Errorf("ParseUsageQuery(%v): err = %v", v, err)
		}
	}
	// Typed queries are validated before any SQL too.
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	if _, err := s.Logs(c, store.LogQuery{ClientIP: "x' OR 1=1 --"}); !errors.Is(err, store.ErrInvalidQuery) {
		t.Errorf("Logs with a bad ip: %v", err)
	}
	if _, err := s.Usage(c, store.UsageQuery{KeyID: "k", From: base, To: base.Add(time.Hour), Granularity: "fortnight"}); !errors.Is(err, store.ErrInvalidQuery) {
		t.Errorf("Usage with a bad granularity: %v", err)
	}
	if _, err := s.Count(c, "system.users"); !errors.Is(err, store.ErrInvalidQuery) {
		t.Errorf("Count of a foreign table: %v", err)
	}
}

func testHostileStrings(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	ev := Events("h", 3, base, time.Second, 1)
	hostile := "x'); DROP TABLE requests; --\n\nSELECT 1\t\\ \x00 é"
	for i := range ev {
		ev[i].KeyID = hostile
		ev[i].UserAgent = hostile
		ev[i].Route = "/a\n\n/b"
	}
	ev[1].ID = hostile
	insert(t, s, "h", ev)
	page, err := s.Logs(c, store.LogQuery{KeyID: hostile, Route: "/a\n\n/b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 3 || page.Events[0].UserAgent != hostile || page.Events[0].KeyID != hostile {
		t.Fatalf("hostile strings did not round-trip: %+v", page.Events)
	}
	if n := mustCount(t, s, "requests"); n != 3 {
		t.Fatalf("requests = %d", n)
	}
	if got, err := s.(store.EventIDChecker).StoredEventIDs(c, ev); err != nil || len(got) != 3 {
		t.Fatalf("stored hostile ids: %v, %v; want all 3", got, err)
	}
}

func testRetention(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	c := ctx(t)
	if d, err := s.Retention(c); err != nil || d != 90 {
		t.Fatalf("default retention = %d, %v; want 90", d, err)
	}
	if err := s.SetRetention(c, 30); err != nil {
		t.Fatal(err)
	}
	if d, err := s.Retention(c); err != nil || d != 30 {
		t.Fatalf("retention = %d, %v; want 30", d, err)
	}
	if err := s.SetRetention(c, 0); !errors.Is(err, store.ErrInvalidQuery) {
		t.Fatalf("retention 0: %v", err)
	}
}
