package apiclient

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/api"
)

func TestPrintKeysColumns(t *testing.T) {
	var b bytes.Buffer
	PrintKeys(&b, api.KeyJSON{ID: "key_1", Project: "p", Kind: "server", DisplayPrefix: "km_live_ab", Status: "active",
		RateLimitPerS: 2.5, MonthlyQuota: 100, QuotaUsed: 7, QuotaState: "ok"})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("want a header and one row, got %q", b.String())
	}
	for _, want := range []string{"key_1", "km_live_ab…", "2.5/s", "7/100 ok", "-"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row %q lacks %q", lines[1], want)
		}
	}
	// A rotated-out key shows it (its status stays active in the API).
	b.Reset()
	PrintKeys(&b, api.KeyJSON{ID: "key_2", Status: "active", ReplacedBy: "key_3", GraceUntil: new(time.Time), Retired: true})
	if !strings.Contains(b.String(), "retired") {
		t.Errorf("a retired key: %q", b.String())
	}
}

func TestKeyUpdateSetsOnlyChangedFlags(t *testing.T) {
	up := KeyUpdate{Name: "n", Rate: 3, Expires: "2030-01-02T03:04:05Z"}
	changed := map[string]bool{"rate": true, "expires": true}
	req, err := up.Request(func(f string) bool { return changed[f] })
	if err != nil {
		t.Fatal(err)
	}
	if req.Name != nil || req.RateLimitPerS == nil || *req.RateLimitPerS != 3 || req.ExpiresAt == nil || req.ExpiresAt.Year() != 2030 {
		t.Fatalf("request %+v: want only rate and expires set", req)
	}
	up.Expires = "tomorrow"
	if _, err := up.Request(func(f string) bool { return changed[f] }); err == nil || !strings.Contains(err.Error(), "--expires") {
		t.Fatalf("bad --expires: got %v", err)
	}
}

func TestFilterValuesLeaveOutEmpty(t *testing.T) {
	q := DecisionFilter{Rule: "r1", Limit: 5}.Values()
	if q.Encode() != "limit=5&rule=r1" {
		t.Fatalf("decisions query %q", q.Encode())
	}
	if q := (UsageFilter{Key: "k", Granularity: "day"}).Values(); q.Encode() != "granularity=day&key=k" {
		t.Fatalf("usage query %q", q.Encode())
	}
}
