package store

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// FilterError is a rejected filter: which field, what value, what is accepted.
type FilterError struct {
	Field    string
	Value    string
	Problem  string
	Accepted string
}

func (e *FilterError) Error() string {
	s := fmt.Sprintf("filter %q", e.Field)
	if e.Value != "" {
		s += fmt.Sprintf(" = %q", e.Value)
	}
	s += ": " + e.Problem
	if e.Accepted != "" {
		s += " (accepted: " + e.Accepted + ")"
	}
	return s
}

func (e *FilterError) Unwrap() error { return ErrInvalidQuery }

func badFilter(field, value, problem, accepted string) error {
	return &FilterError{Field: field, Value: value, Problem: problem, Accepted: accepted}
}

var logFields = []string{"key", "project", "ip", "status", "outcome", "route", "country", "from", "to", "limit", "cursor"}

// ParseLogQuery builds a LogQuery from user input (query string, CLI flags).
// An unknown field or a value of the wrong type is an error.
func ParseLogQuery(v url.Values) (LogQuery, error) {
	var q LogQuery
	for field, vals := range v {
		if !slices.Contains(logFields, field) {
			return q, badFilter(field, "", "unknown field", strings.Join(logFields, ", "))
		}
		if len(vals) != 1 {
			return q, badFilter(field, "", "given more than once", "one value")
		}
	}
	q.KeyID = v.Get("key")
	q.Project = v.Get("project")
	q.ClientIP = v.Get("ip")
	q.Outcome = v.Get("outcome")
	q.Route = v.Get("route")
	q.Country = v.Get("country")
	q.Cursor = v.Get("cursor")
	if s := v.Get("status"); s != "" {
		lo, hi, err := parseStatus(s)
		if err != nil {
			return q, err
		}
		q.StatusMin, q.StatusMax = lo, hi
	}
	var err error
	if q.From, err = parseTime("from", v.Get("from")); err != nil {
		return q, err
	}
	if q.To, err = parseTime("to", v.Get("to")); err != nil {
		return q, err
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return q, badFilter("limit", s, "not an integer", "1-10000")
		}
		q.Limit = n
	}
	return q, q.Validate()
}

func parseStatus(s string) (uint16, uint16, error) {
	const accepted = "an HTTP status 100-599 or a class such as 4xx"
	if len(s) == 3 && s[1:] == "xx" && s[0] >= '1' && s[0] <= '5' {
		c := uint16(s[0]-'0') * 100
		return c, c + 99, nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n < 100 || n > 599 {
		return 0, 0, badFilter("status", s, "not a status", accepted)
	}
	return uint16(n), uint16(n), nil
}

func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return time.Now().Add(-d).UTC(), nil
	}
	return time.Time{}, badFilter(field, s, "not a time", "RFC 3339 (2026-01-02T15:04:05Z), Unix seconds, or a duration ago such as 24h")
}

// Validate checks a LogQuery; Logs calls it before any SQL.
func (q *LogQuery) Validate() error {
	if q.ClientIP != "" {
		if _, err := netip.ParseAddr(q.ClientIP); err != nil {
			if _, err := netip.ParsePrefix(q.ClientIP); err != nil {
				return badFilter("ip", q.ClientIP, "not an IP address or CIDR", "203.0.113.7, 203.0.113.0/24, 2001:db8::/32")
			}
		}
	}
	if q.Outcome != "" {
		if _, err := event.ParseOutcome(q.Outcome); err != nil {
			return badFilter("outcome", q.Outcome, "unknown outcome", outcomeList())
		}
	}
	if q.Country != "" && !isCountry(q.Country) {
		return badFilter("country", q.Country, "not a country code", "ISO 3166-1 alpha-2 in upper case, e.g. DE")
	}
	if q.StatusMax < q.StatusMin {
		return badFilter("status", "", "maximum below minimum", "")
	}
	if !q.From.IsZero() && !q.To.IsZero() && !q.From.Before(q.To) {
		return badFilter("from", q.From.Format(time.RFC3339), "not before \"to\"", "")
	}
	if q.Limit < 0 || q.Limit > 10000 {
		return badFilter("limit", strconv.Itoa(q.Limit), "out of range", "1-10000")
	}
	if q.Cursor != "" {
		if _, _, err := decodeCursor(q.Cursor); err != nil {
			return err
		}
	}
	return nil
}

func outcomeList() string {
	var names []string
	for _, o := range event.Outcomes() {
		names = append(names, o.String())
	}
	return strings.Join(names, ", ")
}

func isCountry(s string) bool {
	return len(s) == 2 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z'
}

// The cursor is the (time, event id) of the last event of a page, opaque to callers.
func encodeCursor(ms int64, id string) string {
	b := binary.AppendVarint(nil, ms)
	b = append(b, id...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(c string) (int64, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		ms, n := binary.Varint(b)
		if n > 0 {
			return ms, string(b[n:]), nil
		}
	}
	return 0, "", badFilter("cursor", c, "not a cursor from a previous page", "the next value of a previous page")
}

var (
	groupByFields = []string{"outcome", "route", "country"}
	usageFields   = []string{"key", "project", "from", "to", "granularity", "group_by"}
)

// ParseUsageQuery builds a UsageQuery from user input; group_by is a
// comma-separated list.
func ParseUsageQuery(v url.Values) (UsageQuery, error) {
	var q UsageQuery
	for field := range v {
		if !slices.Contains(usageFields, field) {
			return q, badFilter(field, "", "unknown field", strings.Join(usageFields, ", "))
		}
	}
	q.KeyID = v.Get("key")
	q.Project = v.Get("project")
	q.Granularity = Granularity(v.Get("granularity"))
	if q.Granularity == "" {
		q.Granularity = Day
	}
	if g := v.Get("group_by"); g != "" {
		q.GroupBy = strings.Split(g, ",")
	}
	var err error
	if q.From, err = parseTime("from", v.Get("from")); err != nil {
		return q, err
	}
	if q.To, err = parseTime("to", v.Get("to")); err != nil {
		return q, err
	}
	if q.To.IsZero() {
		q.To = time.Now().UTC()
	}
	return q, q.Validate()
}

// Validate checks a UsageQuery; Usage calls it before any SQL.
func (q *UsageQuery) Validate() error {
	if q.KeyID == "" && q.Project == "" {
		return badFilter("key", "", "a key or a project is required", "key=<key id> and/or project=<project>")
	}
	switch q.Granularity {
	case Minute, Hour, Day, Month:
	default:
		return badFilter("granularity", string(q.Granularity), "unknown granularity", "minute, hour, day, month")
	}
	for _, g := range q.GroupBy {
		if !slices.Contains(groupByFields, g) {
			return badFilter("group_by", g, "cannot group by this", strings.Join(groupByFields, ", "))
		}
	}
	if q.From.IsZero() || q.To.IsZero() {
		return badFilter("from", "", "from and to are required", "")
	}
	if !q.From.Before(q.To) {
		return badFilter("from", q.From.Format(time.RFC3339), "not before \"to\"", "")
	}
	if q.Granularity == Minute && q.To.Sub(q.From) > 31*24*time.Hour {
		return badFilter("granularity", "minute", "too many buckets for the range", "minute for ranges up to 31 days")
	}
	return nil
}

var errNoIdentity = errors.New("store: a key id is required")
