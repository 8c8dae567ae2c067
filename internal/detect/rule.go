package detect

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Rule is one detection rule as written in a rule file.
type Rule struct {
	ID          string       `yaml:"id" json:"id"`
	Version     uint32       `yaml:"version" json:"version"`
	Name        string       `yaml:"name" json:"name"`
	Description string       `yaml:"description" json:"description,omitempty"`
	Severity    string       `yaml:"severity" json:"severity"`
	Mode        string       `yaml:"mode" json:"mode"`
	Owner       string       `yaml:"owner" json:"owner,omitempty"`
	Tags        []string     `yaml:"tags" json:"tags,omitempty"`
	Match       string       `yaml:"match" json:"match"`
	Aggregate   Aggregate    `yaml:"aggregate" json:"aggregate"`
	Suppress    Duration     `yaml:"suppress" json:"suppress,omitempty"`
	Actions     []ActionSpec `yaml:"actions" json:"actions"`
	Tests       []TestCase   `yaml:"tests" json:"tests,omitempty"`

	// Where the rule was read from, for messages.
	File string    `yaml:"-" json:"-"`
	Line int       `yaml:"-" json:"-"`
	pos  positions // field lines, for messages at compile time
}

// Aggregate says how matching events are grouped and what is computed over
// each group's sliding window.
type Aggregate struct {
	GroupBy   []string      `yaml:"group_by" json:"group_by,omitempty"`
	Window    Duration      `yaml:"window" json:"window"`
	Count     *bool         `yaml:"count" json:"count,omitempty"`
	Distinct  []string      `yaml:"distinct" json:"distinct,omitempty"`
	Sum       []string      `yaml:"sum" json:"sum,omitempty"`
	Baseline  *BaselineSpec `yaml:"baseline" json:"baseline,omitempty"`
	MaxGroups int           `yaml:"max_groups" json:"max_groups,omitempty"`
	// DistinctCap bounds the values remembered per distinct field and group;
	// distinct counts saturate there.
	DistinctCap int `yaml:"distinct_cap" json:"distinct_cap,omitempty"`
}

// BaselineSpec enables the per-group baseline: the group's usual number of
// matching events per window. It is warm-started from the engine's
// BaselineSource and learned as an exponentially weighted average of
// completed windows.
type BaselineSpec struct {
	// Default is used when the source knows nothing about the group.
	Default float64 `yaml:"default" json:"default"`
	// Alpha is the weight of the newest completed window (0 < alpha ≤ 1).
	Alpha float64 `yaml:"alpha" json:"alpha,omitempty"`
}

// ActionSpec is one action of a rule and the condition under which it fires.
type ActionSpec struct {
	Type     string   `yaml:"type" json:"type"`
	When     string   `yaml:"when" json:"when"`
	Rate     float64  `yaml:"rate" json:"rate,omitempty"`         // throttle: requests per second
	Duration Duration `yaml:"duration" json:"duration,omitempty"` // throttle, block_ip, suspend
	Reason   string   `yaml:"reason" json:"reason,omitempty"`
	// Suppress is how long this action does not repeat for a group after
	// it fired; default the rule's suppress, and never shorter than the
	// action's duration.
	Suppress Duration `yaml:"suppress" json:"suppress,omitempty"`
	// Corroboration: "required" (the default for suspend and revoke) holds
	// the action back, as an alert, until another rule has fired on the
	// same key within the engine's corroboration window, or a leak report
	// or a person corroborated it; "none" acts on this rule alone (its
	// condition should then combine independent signals itself).
	Corroboration string `yaml:"corroboration" json:"corroboration,omitempty"`
}

// TestCase is an inline test: generated events and the expected firings.
type TestCase struct {
	Name      string             `yaml:"name" json:"name"`
	Start     string             `yaml:"start" json:"start,omitempty"` // RFC 3339; default 2026-01-01T00:00:00Z
	Baselines map[string]float64 `yaml:"baselines" json:"baselines,omitempty"`
	Allow     []string           `yaml:"allow" json:"allow,omitempty"` // allowlisted key ids and CIDRs
	// Corroborated lists keys that another rule signals throughout the
	// test, so that suspend and revoke are not held for corroboration.
	Corroborated []string `yaml:"corroborated" json:"corroborated,omitempty"`
	// Kinds declares key kinds (server, browser, mobile, batch) by key id,
	// as the key table would: rules read them as key_kind.
	Kinds  map[string]string `yaml:"kinds" json:"kinds,omitempty"`
	Events []EventSeq        `yaml:"events" json:"events"`
	Expect []Expectation     `yaml:"expect" json:"expect"`
}

// EventSeq generates Count events starting At (offset from the test start),
// one Every apart. String fields may contain {i}, replaced by the event's
// index in the sequence; Cycle gives per-field lists cycled through.
type EventSeq struct {
	At        Duration            `yaml:"at" json:"at,omitempty"`
	Count     int                 `yaml:"count" json:"count,omitempty"`
	Every     Duration            `yaml:"every" json:"every,omitempty"`
	KeyID     string              `yaml:"key_id" json:"key_id,omitempty"`
	Project   string              `yaml:"project" json:"project,omitempty"`
	Outcome   string              `yaml:"outcome" json:"outcome,omitempty"`
	IP        string              `yaml:"ip" json:"ip,omitempty"`
	Country   string              `yaml:"country" json:"country,omitempty"`
	ASN       uint32              `yaml:"asn" json:"asn,omitempty"`
	Method    string              `yaml:"method" json:"method,omitempty"`
	Host      string              `yaml:"host" json:"host,omitempty"`
	Route     string              `yaml:"route" json:"route,omitempty"`
	Status    uint16              `yaml:"status" json:"status,omitempty"`
	BytesIn   uint64              `yaml:"bytes_in" json:"bytes_in,omitempty"`
	BytesOut  uint64              `yaml:"bytes_out" json:"bytes_out,omitempty"`
	UserAgent string              `yaml:"user_agent" json:"user_agent,omitempty"`
	CostUnits uint32              `yaml:"cost_units" json:"cost_units,omitempty"`
	Cycle     map[string][]string `yaml:"cycle" json:"cycle,omitempty"`
}

// Expectation is one expected firing: Times decisions with this action for
// this group (and mode, when given).
type Expectation struct {
	Action string `yaml:"action" json:"action"`
	Group  string `yaml:"group" json:"group,omitempty"`
	Mode   string `yaml:"mode" json:"mode,omitempty"`
	Times  int    `yaml:"times" json:"times,omitempty"` // default 1
}

// Duration is a time.Duration written as "30s", "10m", "1h30m" or "1d".
type Duration time.Duration

// UnmarshalYAML implements goccy/go-yaml's BytesUnmarshaler.
func (d *Duration) UnmarshalYAML(b []byte) error {
	s := strings.TrimSpace(string(b))
	s = strings.Trim(s, `"'`)
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back in Go syntax.
func (d Duration) MarshalYAML() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// ParseDuration is time.ParseDuration plus a "d" (24h) unit.
func ParseDuration(s string) (time.Duration, error) {
	if strings.HasSuffix(s, "d") {
		n, err := strconv.Atoi(strings.TrimSuffix(s, "d"))
		if err == nil {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (accepted: 500ms, 30s, 10m, 1h30m, 7d)", s)
	}
	if v < 0 {
		return 0, fmt.Errorf("negative duration %q", s)
	}
	return v, nil
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

var (
	severities  = []string{"info", "low", "medium", "high", "critical"}
	modes       = []string{"enforce", "dry_run", "disabled"}
	actionTypes = []string{"alert", "throttle", "block_ip", "suspend", "revoke"}
)

func oneOf(v string, allowed []string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}
