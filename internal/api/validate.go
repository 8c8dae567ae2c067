package api

import (
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/keymeter/keymeter/internal/keys"
)

// Size limits of what a key is given, documented in schemas/openapi.yaml
// (maxLength, maxItems, maxProperties). Lengths count characters.
const (
	maxProjectLen   = 128
	maxNameLen      = 256 // name, owner
	maxMetaEntries  = 64
	maxMetaKeyLen   = 128
	maxMetaValLen   = 1024
	maxScopes       = 64
	maxScopeLen     = 128
	maxCIDRs        = 256
	maxReasonLen    = 1024
	maxFilterLen    = 256  // a query filter value (key, project, route, rule)
	maxLeakFieldLen = 2048 // source, url of a leak report
)

func checkLen(field, v string, minLen, maxLen int) error {
	n := utf8.RuneCountInString(v)
	if n < minLen || n > maxLen {
		if minLen > 0 {
			return badRequest(field, "%s: %d characters; accepted %d to %d", field, n, minLen, maxLen)
		}
		return badRequest(field, "%s: %d characters; accepted at most %d", field, n, maxLen)
	}
	return nil
}

func checkScopes(field string, scopes []string) error {
	if len(scopes) > maxScopes {
		return badRequest(field, "%s: %d scopes; accepted at most %d", field, len(scopes), maxScopes)
	}
	for i, s := range scopes {
		if err := checkLen(fmt.Sprintf("%s[%d]", field, i), s, 1, maxScopeLen); err != nil {
			return err
		}
	}
	return nil
}

// cidrRe is the grammar of allowed_cidrs entries as the spec states it: an
// IPv4 or IPv6 address (no zone), optionally with a prefix length.
var cidrRe = regexp.MustCompile(`^(` + ipv4 + `(/(3[0-2]|[12]?[0-9]))?|` + ipv6 + `(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$`)

// ipRe is an address without prefix.
var ipRe = regexp.MustCompile(`^(` + ipv4 + `|` + ipv6 + `)$`)

const (
	ipv4Octet = `(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])`
	ipv4      = `(` + ipv4Octet + `\.){3}` + ipv4Octet
	h16       = `[0-9a-fA-F]{1,4}`
	ls32      = `(` + h16 + `:` + h16 + `|` + ipv4 + `)`
	ipv6      = `(` +
		`(` + h16 + `:){6}` + ls32 + `|` +
		`::(` + h16 + `:){5}` + ls32 + `|` +
		`(` + h16 + `)?::(` + h16 + `:){4}` + ls32 + `|` +
		`((` + h16 + `:){0,1}` + h16 + `)?::(` + h16 + `:){3}` + ls32 + `|` +
		`((` + h16 + `:){0,2}` + h16 + `)?::(` + h16 + `:){2}` + ls32 + `|` +
		`((` + h16 + `:){0,3}` + h16 + `)?::` + h16 + `:` + ls32 + `|` +
		`((` + h16 + `:){0,4}` + h16 + `)?::` + ls32 + `|` +
		`((` + h16 + `:){0,5}` + h16 + `)?::` + h16 + `|` +
		`((` + h16 + `:){0,6}` + h16 + `)?::` +
		`)`
)

func checkCIDRs(field string, cidrs []string) error {
	if len(cidrs) > maxCIDRs {
		return badRequest(field, "%s: %d entries; accepted at most %d", field, len(cidrs), maxCIDRs)
	}
	for i, c := range cidrs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if _, err := keys.ParseCIDR(c); err != nil || !cidrRe.MatchString(c) {
			return badRequest(f, "%s %q: want an IPv4 or IPv6 address or CIDR such as 10.0.0.0/8, 203.0.113.7 or 2001:db8::/32", f, c)
		}
	}
	return nil
}

func checkMetadata(field string, md map[string]string) error {
	if len(md) > maxMetaEntries {
		return badRequest(field, "%s: %d entries; accepted at most %d", field, len(md), maxMetaEntries)
	}
	for k, v := range md {
		if err := checkLen(field+" key", k, 1, maxMetaKeyLen); err != nil {
			return err
		}
		if err := checkLen(field+"."+k, v, 0, maxMetaValLen); err != nil {
			return err
		}
	}
	return nil
}

// keyErr turns a keys validation error into a 400 naming field.
func keyErr(field string, err error) error {
	if err == nil {
		return nil
	}
	return badRequest(field, "%s", strings.TrimPrefix(err.Error(), keys.ErrInvalid.Error()+": "))
}

func checkKeyTime(field string, t *time.Time) error {
	if t == nil {
		return nil
	}
	return keyErr(field, keys.CheckTime(field, *t))
}

func checkRate(field string, r *float64) error {
	if r == nil {
		return nil
	}
	return keyErr(field, keys.CheckRate(field, *r))
}

// Query parameters.

// queryParams returns the query of r after refusing unknown parameters,
// parameters given twice and empty values (an empty value is never "not
// given": it is refused, so that a filter is never silently dropped).
func queryParams(r *http.Request, accepted ...string) (url.Values, error) {
	v, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badRequest("", "query string: %v", err)
	}
	names := make([]string, 0, len(v))
	for f := range v {
		names = append(names, f)
	}
	slices.Sort(names)
	for _, f := range names {
		vals := v[f]
		switch {
		case !slices.Contains(accepted, f):
			return nil, badRequest(f, "unknown query parameter %q (accepted: %s)", f, strings.Join(accepted, ", "))
		case len(vals) != 1:
			return nil, badRequest(f, "query parameter %s given %d times; give it once", f, len(vals))
		case vals[0] == "":
			return nil, badRequest(f, "query parameter %s is empty; give a value or leave it out", f)
		}
	}
	return v, nil
}

// intParam parses an integer query parameter within [lo, hi]; integral
// numbers written as decimals (662.0) are integers.
func intParam(v url.Values, field string, lo, hi, def int) (int, error) {
	s := v.Get(field)
	if s == "" {
		return def, nil
	}
	f, _, err := big.ParseFloat(s, 10, 128, big.ToNearestEven)
	if err == nil && f.IsInt() {
		if i, acc := f.Int64(); acc == big.Exact && i >= int64(lo) && i <= int64(hi) {
			return int(i), nil
		}
	}
	return 0, badRequest(field, "%s %q: want an integer %d-%d", field, s, lo, hi)
}

// timeParam parses an RFC 3339 query parameter within the accepted years.
func timeParam(v url.Values, field string) (time.Time, error) {
	s := v.Get(field)
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || !rfc3339Re.MatchString(s) {
		return time.Time{}, badRequest(field, "%s %q: want an RFC 3339 time such as 2026-11-25T00:00:00Z", field, s)
	}
	if err := keys.CheckTime(field, t); err != nil {
		return time.Time{}, keyErr(field, err)
	}
	return t.UTC(), nil
}

// rfc3339Re is what time.Parse(RFC3339) shares with JSON Schema's
// date-time: upper-case T and Z, seconds 00-59.
var rfc3339Re = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$`)
