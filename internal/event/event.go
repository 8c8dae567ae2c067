// Package event defines the usage event, the event batch that carries many
// of them in one bus message, and their codecs: a protobuf codec for the bus
// (byte-compatible with schemas/keymeter/v1/keymeter.proto, hand-written for
// speed) and a JSON codec for third parties and NDJSON files
// (schemas/usage-event.schema.json).
package event

import (
	"fmt"
	"net/netip"
	"time"
)

// Outcome is the verifier's decision for one request. Values match the
// protobuf enum keymeter.v1.Outcome.
type Outcome uint8

const (
	OutcomeUnspecified Outcome = iota
	OutcomeValid
	OutcomeMissing
	OutcomeMalformed
	OutcomeUnknown
	OutcomeRevoked
	OutcomeExpired
	OutcomeSuspended
	OutcomeIPDenied
	OutcomeScopeDenied
	OutcomeRateLimited
	OutcomeQuotaExceeded
	OutcomeThrottled
	OutcomeBlockedIP
	outcomeCount
)

var outcomeNames = [outcomeCount]string{
	"unspecified", "valid", "missing", "malformed", "unknown", "revoked", "expired",
	"suspended", "ip_denied", "scope_denied", "rate_limited", "quota_exceeded",
	"throttled", "blocked_ip",
}

// Outcomes lists every outcome a verifier can produce, in enum order.
func Outcomes() []Outcome {
	out := make([]Outcome, 0, outcomeCount-1)
	for o := OutcomeValid; o < outcomeCount; o++ {
		out = append(out, o)
	}
	return out
}

func (o Outcome) String() string {
	if o < outcomeCount {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Valid reports whether o is a known, specified outcome.
func (o Outcome) Valid() bool { return o > OutcomeUnspecified && o < outcomeCount }

// Allowed reports whether the request was passed to the upstream.
func (o Outcome) Allowed() bool { return o == OutcomeValid }

// ParseOutcome parses the JSON/CLI name of an outcome ("valid", "rate_limited", ...).
func ParseOutcome(s string) (Outcome, error) {
	for i := OutcomeValid; i < outcomeCount; i++ {
		if outcomeNames[i] == s {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown outcome %q (accepted: valid, missing, malformed, unknown, revoked, expired, suspended, ip_denied, scope_denied, rate_limited, quota_exceeded, throttled, blocked_ip)", s)
}

// Event is one request seen by a verifier, whatever its outcome.
//
// Events decoded from a batch share memory with the bytes they were decoded
// from (see DecodeBatch); strings must be cloned before the bytes are reused.
type Event struct {
	ID         string // unique per producer: <producer>-<sequence>
	Time       time.Time
	Project    string
	KeyID      string // empty when anonymous or not resolved
	Outcome    Outcome
	ClientIP   string
	Country    string // ISO 3166-1 alpha-2, upper case
	ASN        uint32
	Method     string
	Host       string
	Route      string
	Status     uint16
	LatencyUS  uint32
	BytesIn    uint64
	BytesOut   uint64
	UserAgent  string
	VerifierID string
	CostUnits  uint32
}

// Batch is one bus message: many events under one id used for deduplication.
type Batch struct {
	ID       string
	Producer string
	Created  time.Time
	Events   []Event
}

// PartitionKey is the key events are partitioned by on the bus: the key id,
// or the client's /24 (IPv4) or /48 (IPv6) for anonymous traffic, so one
// attacker's anonymous traffic stays in one partition.
func (e *Event) PartitionKey() string {
	if e.KeyID != "" {
		return e.KeyID
	}
	return ClientNet(e.ClientIP)
}

// ClientNet returns the /24 of an IPv4 address (an IPv4-mapped IPv6
// address counts as IPv4) or the /48 of an IPv6 one, in CIDR form
// (2001:db8::1 is 2001:db8::/48); other input is returned unchanged.
func ClientNet(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	bits := 48
	if a.Is4() {
		bits = 24
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return ip
	}
	return p.Masked().String()
}
