package store

import (
	"net/url"
	"testing"

	"github.com/keymeter/keymeter/internal/event"
)

func TestLogQueryMatcher(t *testing.T) {
	e := event.Event{KeyID: "key_a", Project: "p", ClientIP: "203.0.113.9", Status: 429, Outcome: event.OutcomeValid, Route: "/v1/items", Country: "DE"}
	for _, tc := range []struct {
		query string
		want  bool
	}{
		{"", true},
		{"key=key_a&project=p&country=DE&route=/v1/items", true},
		{"key=key_b", false},
		{"ip=203.0.113.0/24", true},
		{"ip=203.0.113.9", true},
		{"ip=198.51.100.0/24", false},
		{"status=400-499", true},
		{"status=500-599", false},
		{"status=429", true},
		{"outcome=valid", true},
		{"outcome=revoked", false},
	} {
		v, _ := url.ParseQuery(tc.query)
		q, err := ParseLogQuery(v)
		if err != nil {
			t.Fatalf("%q: %v", tc.query, err)
		}
		if got := q.Matcher()(&e); got != tc.want {
			t.Errorf("%q: match %v, want %v", tc.query, got, tc.want)
		}
	}
}
