package apiclient

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/keymeter/keymeter/internal/api"
)

// Requests built from what people type: flags, durations, secrets.

// UsageFilter is the query of GET /v1/usage; empty fields are left out.
type UsageFilter struct {
	Key, Project string
	// From and To go through Time.
	From, To             string
	Granularity, GroupBy string
}

// Values are the filter's query parameters.
func (f UsageFilter) Values() url.Values {
	return nonEmpty(map[string]string{"key": f.Key, "project": f.Project, "from": Time(f.From), "to": Time(f.To),
		"granularity": f.Granularity, "group_by": f.GroupBy})
}

// DecisionFilter is the query of GET /v1/decisions.
type DecisionFilter struct {
	Key, Rule, Project, Cursor string
	Limit                      int
}

// Values are the filter's query parameters.
func (f DecisionFilter) Values() url.Values {
	q := nonEmpty(map[string]string{"key": f.Key, "rule": f.Rule, "project": f.Project, "cursor": f.Cursor})
	q.Set("limit", strconv.Itoa(f.Limit))
	return q
}

func nonEmpty(m map[string]string) url.Values {
	q := url.Values{}
	for k, v := range m {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// ParseExpiry reads an expiry as --expires takes it: a duration from now or
// an RFC 3339 time.
func ParseExpiry(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(d).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--expires %q: want a duration (720h) or an RFC 3339 time", s)
	}
	return t, nil
}

// KeyUpdate holds the values of keys update's flags.
type KeyUpdate struct {
	Rate, Throttle   float64
	Burst            uint32
	Quota            uint64
	Scopes, CIDRs    []string
	Expires, Name    string
	Kind             string
	ThrottleDuration time.Duration
}

// Request sets in the request only the fields whose flags were given
// (changed reports whether the flag of that name was).
func (up *KeyUpdate) Request(changed func(string) bool) (api.UpdateKeyRequest, error) {
	var req api.UpdateKeyRequest
	set := func(flag string, apply func()) {
		if changed(flag) {
			apply()
		}
	}
	set("name", func() { req.Name = &up.Name })
	set("kind", func() { req.Kind = &up.Kind })
	set("rate", func() { req.RateLimitPerS = &up.Rate })
	set("burst", func() { req.RateBurst = &up.Burst })
	set("quota", func() { req.MonthlyQuota = &up.Quota })
	set("scopes", func() { req.Scopes = &up.Scopes })
	set("cidrs", func() { req.AllowedCIDRs = &up.CIDRs })
	set("throttle", func() {
		until := time.Now().Add(up.ThrottleDuration).UTC()
		req.ThrottlePerS, req.ThrottleUntil = &up.Throttle, &until
	})
	if changed("expires") {
		t, err := time.Parse(time.RFC3339, up.Expires)
		if err != nil {
			return req, fmt.Errorf("--expires %q: want an RFC 3339 time", up.Expires)
		}
		req.ExpiresAt = &t
	}
	return req, nil
}

// LeakRequest is the report of a leaked secret: only its SHA-256 is sent.
func LeakRequest(secret, source, link string) api.LeakHashRequest {
	sum := sha256.Sum256([]byte(secret))
	return api.LeakHashRequest{TokenSHA256: hex.EncodeToString(sum[:]), Source: source, URL: link}
}
