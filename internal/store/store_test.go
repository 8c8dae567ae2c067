package store

import (
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

func TestParseLogQuery(t *testing.T) {
	q, err := ParseLogQuery(url.Values{"key": {"key_1"}, "status": {"5xx"}, "ip": {"10.0.0.0/8"}, "from": {"2026-01-02T03:04:05Z"}, "limit": {"50"}})
	if err != nil {
		t.Fatal(err)
	}
	if q.KeyID != "key_1" || q.StatusMin != 500 || q.StatusMax != 599 || q.ClientIP != "10.0.0.0/8" || q.Limit != 50 ||
		!q.From.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Fatalf("%+v", q)
	}
	for _, tc := range []struct {
		v    url.Values
		want string
	}{
		{url.Values{"nope": {"1"}}, `filter "nope": unknown field (accepted: key, project, ip, status, outcome, route, country, from, to, limit, cursor)`},
		{url.Values{"status": {"abc"}}, `filter "status" = "abc": not a status (accepted: an HTTP status 100-599, a class such as 4xx, or a range such as 500-599)`},
		{url.Values{"key": {"a", "b"}}, `filter "key": given more than once (accepted: one value)`},
	} {
		_, err := ParseLogQuery(tc.v)
		if err == nil || err.Error() != tc.want || !errors.Is(err, ErrInvalidQuery) {
			t.Errorf("%v: err = %v\nwant %s", tc.v, err, tc.want)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	c := encodeCursor(1767322800123, "ev-42")
	ms, id, err := decodeCursor(c)
	if err != nil || ms != 1767322800123 || id != "ev-42" {
		t.Fatalf("%d %q %v", ms, id, err)
	}
	// Every string of the documented grammar is a cursor; others are not.
	for _, ok := range []string{"0-", "5-ab", "123456789012345-00ff"} {
		if !ValidCursor(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "-", "5-a", "5-AB", "1234567890123456-", "x-00"} {
		if ValidCursor(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSplitStatements(t *testing.T) {
	got := SplitStatements("-- c\nCREATE TABLE a (x UInt8);\n\n-- d\nCREATE VIEW b AS\nSELECT 1;\nSELECT 2")
	if len(got) != 3 || got[0] != "CREATE TABLE a (x UInt8)" || got[1] != "CREATE VIEW b AS\nSELECT 1" || got[2] != "SELECT 2" {
		t.Fatalf("%q", got)
	}
}

func TestParamText(t *testing.T) {
	if s := (Param{Value: "a\tb\\c\nd"}).Text(); s != `a\tb\\c\nd` {
		t.Fatalf("%q", s)
	}
	if s := ArrayLiteral([]string{"x'y", `a\b`}); s != `['x\'y','a\\b']` {
		t.Fatalf("%q", s)
	}
}

func TestPreAggregate(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	ev := []event.Event{
		{Time: t0, Project: "p", KeyID: "k1", Outcome: event.OutcomeValid, ClientIP: "1.1.1.1", Route: "/a", Country: "DE", BytesIn: 1, BytesOut: 2, CostUnits: 3},
		{Time: t0.Add(30 * time.Second), Project: "p", KeyID: "k1", Outcome: event.OutcomeValid, ClientIP: "1.1.1.2", Route: "/a", Country: "DE", BytesIn: 1, BytesOut: 2, CostUnits: 3},
		{Time: t0.Add(59 * time.Second), Project: "p", KeyID: "k1", Outcome: event.OutcomeValid, ClientIP: "1.1.1.1", Route: "/a", Country: "DE", BytesIn: 1, BytesOut: 2, CostUnits: 3},
		{Time: t0.Add(60 * time.Second), Project: "p", KeyID: "k1", Outcome: event.OutcomeValid, ClientIP: "1.1.1.1", Route: "/a", Country: "DE"},
		{Time: t0, Project: "p", KeyID: "k2", Outcome: event.OutcomeRevoked, ClientIP: "1.1.1.1", Route: "/a", Country: "DE"},
	}
	rows := PreAggregate(ev)
	if len(rows) != 3 {
		t.Fatalf("%d rows: %+v", len(rows), rows)
	}
	r := rows[0]
	if r.Minute != uint32(t0.Unix()) || r.KeyID != "k1" || r.Outcome != "valid" || r.Requests != 3 || r.BytesIn != 3 || r.BytesOut != 6 || r.CostUnits != 9 || len(r.IPHashes) != 2 {
		t.Fatalf("%+v", r)
	}
}

// FuzzParseLogQuery: any input is either a valid query or an ErrInvalidQuery.
func FuzzParseLogQuery(f *testing.F) {
	f.Add("ip", "10.0.0.0/8", "status", "4xx")
	f.Add("cursor", "AAAA", "from", "24h")
	f.Add("country", "DE", "limit", "-1")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		q, err := ParseLogQuery(url.Values{k1: {v1}, k2: {v2}})
		if err != nil {
			if !errors.Is(err, ErrInvalidQuery) {
				t.Fatalf("error not ErrInvalidQuery: %v", err)
			}
			return
		}
		if err := q.Validate(); err != nil {
			t.Fatalf("parsed query does not validate: %v", err)
		}
	})
}
