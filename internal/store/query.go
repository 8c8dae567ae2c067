package store

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
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

// LogFields are the filters ParseLogQuery accepts.
func LogFields() []string { return slices.Clone(logFields) }

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
	if s, ok := v["limit"]; ok {
		// Given, it must be 1-10000 (0 is not "the default").
		n, err := strconv.Atoi(s[0])
		if err != nil || n < 1 || n > 10000 {
			return q, badFilter("limit", s[0], "not an integer 1-10000", "1-10000")
		}
		q.Limit = n
	}
	return q, q.Validate()
}

// parseStatus reads a status (404), a class (5xx) or an inclusive range
// (500-599; a range whose end is below its start matches nothing).
func parseStatus(s string) (uint16, uint16, error) {
	const accepted = "an HTTP status 100-599, a class such as 4xx, or a range such as 500-599"
	if len(s) == 3 && s[1:] == "xx" && s[0] >= '1' && s[0] <= '5' {
		c := uint16(s[0]-'0') * 100
		return c, c + 99, nil
	}
	one := func(s string) (uint16, bool) {
		n, err := strconv.ParseUint(s, 10, 16)
		return uint16(n), err == nil && len(s) == 3 && n >= 100 && n <= 599
	}
	if lo, hi, ok := strings.Cut(s, "-"); ok {
		l, okl := one(lo)
		h, okh := one(hi)
		if !okl || !okh {
			return 0, 0, badFilter("status", s, "not a status range", accepted)
		}
		return l, h, nil
	}
	n, ok := one(s)
	if !ok {
		return 0, 0, badFilter("status", s, "not a status", accepted)
	}
	return n, n, nil
}

// Times a filter accepts: the years keys accept (keys.MinYear-MaxYear).
const minYear, maxYear = 1971, 2261

func timeInRange(field, s string, t time.Time) (time.Time, error) {
	if t.Year() < minYear || t.Year() > maxYear {
		return time.Time{}, badFilter(field, s, "out of range", fmt.Sprintf("times in the years %d to %d", minYear, maxYear))
	}
	return t.UTC(), nil
}

func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return timeInRange(field, s, t)
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > 1<<40 { // far past year 9999: time.Unix would wrap
			return time.Time{}, badFilter(field, s, "out of range", fmt.Sprintf("times in the years %d to %d", minYear, maxYear))
		}
		return timeInRange(field, s, time.Unix(n, 0))
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return timeInRange(field, s, time.Now().Add(-d))
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

// The cursor is the (time, event id) of the last event of a page, opaque to
// callers: "<unix ms>-<hex of the id>", so that its grammar is a regular
// expression a spec can state (cursorRe).
func encodeCursor(ms int64, id string) string {
	return strconv.FormatInt(ms, 10) + "-" + hex.EncodeToString([]byte(id))
}

var cursorRe = regexp.MustCompile(`^[0-9]{1,15}-([0-9a-f]{2})*$`)

func decodeCursor(c string) (int64, string, error) {
	if cursorRe.MatchString(c) {
		msText, idHex, _ := strings.Cut(c, "-")
		ms, err1 := strconv.ParseInt(msText, 10, 64)
		id, err2 := hex.DecodeString(idHex)
		if err1 == nil && err2 == nil {
			return ms, string(id), nil
		}
	}
	return 0, "", badFilter("cursor", c, "not a cursor from a previous page", "the next value of a previous page")
}

// ValidCursor reports whether c is a cursor of the logs or decisions.
func ValidCursor(c string) bool {
	_, _, err := decodeCursor(c)
	return err == nil
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
	return nil
}

var errNoIdentity = errors.New("store: a key id is required")

// newestFirst is a newest-first list paged by (time, id), as decisions and
// the audit trail are: it checks and defaults the limit, and starts the
// WHERE terms and parameters with the time range and the cursor. Callers
// append their own equality filters with eq. badCursor, when not nil, is
// the error for a cursor that does not decode (else decodeCursor's own).
type newestFirst struct {
	where []string
	p     Params
}

func newNewestFirst(limit int, from, to time.Time, cursor string, badCursor error) (*newestFirst, error) {
	if limit < 0 || limit > 10000 {
		return nil, badFilter("limit", strconv.Itoa(limit), "out of range", "1-10000")
	}
	if limit == 0 {
		limit = 100
	}
	q := &newestFirst{where: []string{"1"}, p: Params{}.U64("limit", uint64(limit))}
	if !from.IsZero() {
		q.where, q.p = append(q.where, "time >= fromUnixTimestamp64Milli({from:Int64}, 'UTC')"), q.p.Ms("from", from)
	}
	if !to.IsZero() {
		q.where, q.p = append(q.where, "time < fromUnixTimestamp64Milli({to:Int64}, 'UTC')"), q.p.Ms("to", to)
	}
	if cursor != "" {
		ms, id, err := decodeCursor(cursor)
		if err != nil {
			if badCursor != nil {
				return nil, badCursor
			}
			return nil, err
		}
		q.where = append(q.where, "(time, id) < (fromUnixTimestamp64Milli({cms:Int64}, 'UTC'), {cid:String})")
		q.p = q.p.I64("cms", ms).Str("cid", id)
	}
	return q, nil
}

// eq adds column = value (a String parameter named param) when value is set.
func (q *newestFirst) eq(column, param, value string) {
	if value != "" {
		q.where, q.p = append(q.where, column+" = {"+param+":String}"), q.p.Str(param, value)
	}
}

func (q *newestFirst) whereSQL() string { return strings.Join(q.where, " AND ") }
