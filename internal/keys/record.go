package keys

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// Status is a key's lifecycle status.
type Status uint8

const (
	StatusUnspecified Status = Status(keymeterv1.KeyStatus_KEY_STATUS_UNSPECIFIED)
	StatusActive      Status = Status(keymeterv1.KeyStatus_KEY_STATUS_ACTIVE)
	StatusSuspended   Status = Status(keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED)
	StatusRevoked     Status = Status(keymeterv1.KeyStatus_KEY_STATUS_REVOKED)
	StatusDeleted     Status = Status(keymeterv1.KeyStatus_KEY_STATUS_DELETED)
)

// QuotaState is the aggregator's verdict on a key's quota period.
type QuotaState uint8

const (
	QuotaUnspecified QuotaState = QuotaState(keymeterv1.QuotaState_QUOTA_STATE_UNSPECIFIED)
	QuotaOK          QuotaState = QuotaState(keymeterv1.QuotaState_QUOTA_STATE_OK)
	QuotaWarning     QuotaState = QuotaState(keymeterv1.QuotaState_QUOTA_STATE_WARNING)
	QuotaExceeded    QuotaState = QuotaState(keymeterv1.QuotaState_QUOTA_STATE_EXCEEDED)
)

// Record is the verifier's compact, immutable view of one key: what the hot
// path needs and nothing else, so that a million of them fit in memory. The
// full state (name, owner, metadata, ...) stays in keymeterv1.KeyState.
// A Record is never modified once published; an update replaces it.
type Record struct {
	ID      string
	Project string // interned by the table: many keys share a project

	// Kind is what the key is embedded in (KindServer, KindBrowser,
	// KindMobile, KindBatch); never empty in a decoded record.
	Kind string

	Status     Status
	Env        Env
	QuotaState QuotaState
	// Burst is the rate-limit bucket size (≥ 1 when RateInterval > 0).
	Burst uint32

	ExpiresAt  int64 // unix ns; 0: never
	GraceUntil int64 // unix ns; a rotated-out key verifies until then; 0: not rotated
	// RateInterval is the time one request costs in the key's bucket
	// (1s / rate); 0: no rate limit.
	RateInterval int64

	MonthlyQuota uint64 // 0: unlimited
	QuotaUsed    uint64 // as last published by the aggregator
	// QuotaPeriodStart is the period QuotaUsed and QuotaState are about
	// (unix ns); older than the current period means "not yet published".
	QuotaPeriodStart int64
	Version          uint64

	// Limits holds the rarely set constraints; nil for most keys, which
	// keeps the record at 120 bytes.
	Limits *Limits
}

// Key kinds: what a key is embedded in, so that detection can compare it
// with keys like it (a mobile SDK key is used from many countries at once,
// a batch key in daily bursts). An empty or unknown kind is a server key.
const (
	KindServer  = "server"  // a backend service (the default)
	KindBrowser = "browser" // a publishable key in web pages
	KindMobile  = "mobile"  // embedded in a mobile app or SDK
	KindBatch   = "batch"   // batch jobs and CI
)

// Kinds lists the accepted kinds.
var Kinds = []string{KindServer, KindBrowser, KindMobile, KindBatch}

// ParseKind validates a kind given by a person: empty is server, anything
// else must be one of Kinds.
func ParseKind(s string) (string, error) {
	switch s {
	case "":
		return KindServer, nil
	case KindServer, KindBrowser, KindMobile, KindBatch:
		return s, nil
	}
	return "", fmt.Errorf("kind %q: accepted values are %s", s, strings.Join(Kinds, ", "))
}

// KindOf is the kind a stored value stands for: unknown values (written by
// a newer version) and empty ones (written before kinds) are server.
func KindOf(s string) string {
	if k, err := ParseKind(s); err == nil {
		return k
	}
	return KindServer
}

// Limits are a key's optional constraints.
type Limits struct {
	Scopes []string
	CIDRs  []netip.Prefix
	// ThrottleInterval is the detector's throttle (1s / rate), active until
	// ThrottleUntil; 0: none.
	ThrottleInterval int64
	ThrottleUntil    int64
}

// Throttle returns the throttle interval and deadline (0, 0 when none).
func (r *Record) Throttle() (interval, until int64) {
	if r.Limits == nil {
		return 0, 0
	}
	return r.Limits.ThrottleInterval, r.Limits.ThrottleUntil
}

// Scopes returns the key's scopes (nil when none).
func (r *Record) Scopes() []string {
	if r.Limits == nil {
		return nil
	}
	return r.Limits.Scopes
}

// HasScope reports whether the key grants scope: an exact match, "*", or a
// "<prefix>:*" entry covering "<prefix>:<anything>". A key without scopes
// grants none; routes without a scope need none.
func (r *Record) HasScope(scope string) bool {
	if scope == "" {
		return true
	}
	if r.Limits == nil {
		return false
	}
	for _, s := range r.Limits.Scopes {
		if s == scope || s == "*" {
			return true
		}
		if n := len(s); n >= 2 && s[n-1] == '*' && s[n-2] == ':' && strings.HasPrefix(scope, s[:n-1]) {
			return true
		}
	}
	return false
}

// AllowsIP reports whether ip is inside one of the key's allowed CIDRs (any
// IP when the key has none).
func (r *Record) AllowsIP(ip netip.Addr) bool {
	if r.Limits == nil || len(r.Limits.CIDRs) == 0 {
		return true
	}
	ip = ip.Unmap()
	for _, p := range r.Limits.CIDRs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// RatePerSecond is the key's rate limit in requests per second (0: none).
func (r *Record) RatePerSecond() float64 {
	if r.RateInterval <= 0 {
		return 0
	}
	return float64(time.Second) / float64(r.RateInterval)
}

// interval converts a rate in requests per second to the time one request
// costs; 0 for no limit.
func interval(perS float64) int64 {
	if perS <= 0 {
		return 0
	}
	iv := int64(float64(time.Second) / perS)
	if iv < 1 {
		iv = 1
	}
	return iv
}

// ParseCIDR parses a CIDR ("10.0.0.0/8") or a single address ("10.1.2.3").
func ParseCIDR(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR (want e.g. 10.0.0.0/8 or 2001:db8::/32): %w", s, err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a CIDR: %w", s, err)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: an address with a zone is not a network (want e.g. fe80::1 or fe80::/10)", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
