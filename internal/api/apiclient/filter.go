package apiclient

import (
	"net/url"
	"strconv"
	"time"
)

// Time turns a time as people type it into the RFC 3339 the API takes: a
// duration (24h: that long ago) and Unix seconds are converted, anything
// else is passed on as given for the API to judge.
func Time(s string) string {
	if s == "" {
		return s
	}
	if _, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return s
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return time.Now().Add(-d).UTC().Format(time.RFC3339)
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 && n < 1<<36 {
		return time.Unix(n, 0).UTC().Format(time.RFC3339)
	}
	return s
}

// LogFilter is the filter of GET /v1/logs (and of logs --follow, through
// store.ParseLogQuery of its Values). Empty fields select everything.
type LogFilter struct {
	Key, Project, IP, Status, Outcome, Route, Country string
	// From and To go through Time.
	From, To string
}

// Values are the filter's query parameters.
func (f LogFilter) Values() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"key": f.Key, "project": f.Project, "ip": f.IP, "status": f.Status,
		"outcome": f.Outcome, "route": f.Route, "country": f.Country, "from": Time(f.From), "to": Time(f.To)} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}
