package verifier

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/keys"
)

// Route configures the requests under a path prefix. The longest prefix
// matching at a segment boundary wins (see Verifier.route); requests
// matching none use the zero Route (a key required, no scope). Paths are
// matched percent-decoded and ASCII case-insensitively; paths with dot
// segments or encoded separators are refused before (see routePath).
type Route struct {
	Prefix string
	// Scope the key must grant (see keys.Record.HasScope); "" for none.
	Scope string
	// Anonymous lets requests without a key through, each client address
	// limited to AnonRatePerS (burst AnonBurst). A request that carries a
	// key is still verified as such.
	Anonymous    bool
	AnonRatePerS float64
	AnonBurst    uint32
	// CostUnits is what one request costs in usage events (default 1).
	CostUnits uint32

	anon *ipBuckets
}

// ParseRoute parses "PREFIX[,scope=S][,anonymous=RATE[/BURST]][,cost=N]",
// the --route flag's syntax, e.g. "/public,anonymous=5/10" or
// "/v1/admin,scope=admin".
func ParseRoute(s string) (Route, error) {
	parts := strings.Split(s, ",")
	r := Route{Prefix: parts[0]}
	if !strings.HasPrefix(r.Prefix, "/") {
		return r, fmt.Errorf("route %q: the prefix must start with /", s)
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch k {
		case "scope":
			r.Scope = v
		case "anonymous":
			r.Anonymous = true
			rate, burst, _ := strings.Cut(v, "/")
			if _, err := fmt.Sscan(rate, &r.AnonRatePerS); err != nil || r.AnonRatePerS <= 0 {
				return r, fmt.Errorf("route %q: anonymous=%q: want RATE[/BURST], e.g. anonymous=5/10", s, v)
			}
			if burst != "" {
				if _, err := fmt.Sscan(burst, &r.AnonBurst); err != nil {
					return r, fmt.Errorf("route %q: anonymous burst %q is not a number", s, burst)
				}
			}
		case "cost":
			if _, err := fmt.Sscan(v, &r.CostUnits); err != nil {
				return r, fmt.Errorf("route %q: cost=%q is not a number", s, v)
			}
		default:
			return r, fmt.Errorf("route %q: unknown option %q (accepted: scope=, anonymous=, cost=)", s, k)
		}
	}
	return r, nil
}

// ParseRoutes parses --route values. A value may hold several routes
// separated by commas (as a config file list or an environment variable
// arrives): each element starting with "/" begins a new route, since
// options never do.
func ParseRoutes(values []string) ([]Route, error) {
	var out []Route
	for _, v := range values {
		var cur []string
		flush := func() error {
			if len(cur) == 0 {
				return nil
			}
			r, err := ParseRoute(strings.Join(cur, ","))
			if err != nil {
				return err
			}
			out = append(out, r)
			cur = cur[:0]
			return nil
		}
		for _, tok := range strings.Split(v, ",") {
			tok = strings.TrimSpace(tok)
			if strings.HasPrefix(tok, "/") {
				if err := flush(); err != nil {
					return nil, err
				}
			}
			cur = append(cur, tok)
		}
		if err := flush(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Config configures a Verifier.
type Config struct {
	Table  *keys.Table
	Routes []Route
	// Blocks holds the addresses detection blocked; a fresh list if nil.
	Blocks *BlockList
	// Now is the clock (tests); time.Now by default.
	Now func() time.Time
	// QuotaPeriod is "month" (default) or "day": the aggregator's quota
	// period, so that usage published for an earlier period is not
	// enforced in a new one.
	QuotaPeriod string
	// AnonIPv6Prefix is the IPv6 network size (bits) one anonymous client
	// is rate-limited as: DefaultAnonIPv6Prefix (/64) when 0.
	AnonIPv6Prefix int
	// BlockValidKeys makes an address block refuse requests with a valid,
	// active key too. By default a block refuses only requests without
	// one (missing, malformed, unknown, revoked, suspended, expired), so
	// that one abuser behind a shared (carrier, office) NAT does not lock
	// out every key there.
	BlockValidKeys bool
}

// Validate reports every problem of the configuration; it changes nothing.
func (c Config) Validate() error {
	var errs []error
	if c.Table == nil {
		errs = append(errs, errors.New("verifier: Table is required"))
	}
	if c.AnonIPv6Prefix < 0 || c.AnonIPv6Prefix > 128 || c.AnonIPv6Prefix != 0 && c.AnonIPv6Prefix < 32 {
		errs = append(errs, fmt.Errorf("verifier: anonymous IPv6 prefix /%d: want 32 to 128 (0: /64)", c.AnonIPv6Prefix))
	}
	switch c.QuotaPeriod {
	case "", "month", "day":
	default:
		errs = append(errs, fmt.Errorf("verifier: quota period %q: accepted values are month, day", c.QuotaPeriod))
	}
	seen := map[string]bool{}
	for _, r := range c.Routes {
		if !strings.HasPrefix(r.Prefix, "/") {
			errs = append(errs, fmt.Errorf("verifier: route %q: the prefix must start with /", r.Prefix))
		}
		if lp := strings.ToLower(r.Prefix); seen[lp] {
			errs = append(errs, fmt.Errorf("verifier: route %q configured twice (prefixes match case-insensitively)", r.Prefix))
		} else {
			seen[lp] = true
		}
		if r.Anonymous && r.AnonRatePerS <= 0 {
			errs = append(errs, fmt.Errorf("verifier: route %q: anonymous access needs a per-IP rate > 0", r.Prefix))
		}
	}
	return errors.Join(errs...)
}

// Verifier makes the decision for each request.
type Verifier struct {
	table  *keys.Table
	routes []Route // longest prefix first
	dflt   Route
	blocks *BlockList
	now    func() time.Time
	period quotaPeriod
	// blockAll: Config.BlockValidKeys.
	blockAll bool
}

// New returns a Verifier.
func New(cfg Config) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	v := &Verifier{table: cfg.Table, blocks: cfg.Blocks, now: cfg.Now, dflt: Route{CostUnits: 1}, blockAll: cfg.BlockValidKeys}
	v.period.day = cfg.QuotaPeriod == "day"
	if v.blocks == nil {
		v.blocks = &BlockList{}
	}
	for _, r := range cfg.Routes {
		if r.Anonymous {
			r.anon = newIPBuckets(r.AnonRatePerS, r.AnonBurst, cfg.AnonIPv6Prefix)
		}
		if r.CostUnits == 0 {
			r.CostUnits = 1
		}
		v.routes = append(v.routes, r)
	}
	sort.SliceStable(v.routes, func(i, j int) bool { return len(v.routes[i].Prefix) > len(v.routes[j].Prefix) })
	return v, nil
}

// Blocks is the verifier's block list.
func (v *Verifier) Blocks() *BlockList { return v.blocks }

// Table is the verifier's key table.
func (v *Verifier) Table() *keys.Table { return v.table }

// Request is what Verify needs to know about a request.
type Request struct {
	// Key is the credential as presented, "" when none (see ExtractKey).
	Key      string
	ClientIP netip.Addr
	// ASN is the client's AS number, 0 when unknown: it matters only to
	// ASN blocks (a block_ip decision of a rule grouped by asn).
	ASN    uint32
	Method string
	Path   string
	// Now is the request's arrival (unix ns); 0 means the verifier's clock.
	Now int64
}

// Decision is the verdict on one request.
type Decision struct {
	Outcome event.Outcome
	// Record is the key's record when the key was found, else nil.
	Record *keys.Record
	// Route is the matched route.
	Route *Route
	// Rate-limit state, for the RateLimit headers, when a bucket applied.
	Limited    bool
	Limit      uint32
	Remaining  uint32
	WindowNs   int64 // time a full bucket takes to refill
	ResetNs    int64 // until the bucket is full again
	RetryAfter int64 // ns until a refused request could pass
	Now        int64
	// slot is the key's slot when the key was found (the tunnels of an
	// upgraded request follow it).
	slot *keys.Slot
}

// Allowed reports whether the request may pass.
func (d *Decision) Allowed() bool { return d.Outcome == event.OutcomeValid }

// KeyID is the key's id, "" when the key was not found.
func (d *Decision) KeyID() string {
	if d.Record == nil {
		return ""
	}
	return d.Record.ID
}

// Project is the key's project, "" when the key was not found.
func (d *Decision) Project() string {
	if d.Record == nil {
		return ""
	}
	return d.Record.Project
}

// hasPrefixFold is strings.HasPrefix ignoring ASCII case.
func hasPrefixFold(s, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		a, b := s[i], prefix[i]
		if a != b && lower(a) != lower(b) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// route returns the route of path: the longest prefix that matches at a
// segment boundary ("/public" matches /public and /public/x, not
// /publicity; "/v1/" matches everything under /v1/). Prefixes match
// ASCII case-insensitively: an upstream that ignores case (Windows,
// case-insensitive routers) serves /ADMIN/x as /admin/x, so /ADMIN/x is
// decided as /admin/x; a case-sensitive upstream only gets stricter.
func (v *Verifier) route(path string) *Route {
	for i := range v.routes {
		p := v.routes[i].Prefix
		if hasPrefixFold(path, p) && (len(path) == len(p) || p[len(p)-1] == '/' || path[len(p)] == '/') {
			return &v.routes[i]
		}
	}
	return &v.dflt
}

// Verify decides on one request. It does not allocate or lock.
func (v *Verifier) Verify(req *Request) Decision {
	now := req.Now
	if now == 0 {
		if v.now != nil {
			now = v.now().UnixNano()
		} else {
			now = time.Now().UnixNano()
		}
	}
	d := Decision{Now: now, Route: v.route(req.Path)}
	// A blocked address (detection's block_ip, against credential
	// stuffing) refuses what does not carry a valid key. A valid, active
	// key goes on: one abuser behind a carrier or office NAT must not lock
	// out every key there; a key's own abuse is handled by key actions.
	// With BlockValidKeys the block refuses everything.
	blocked := v.blocks.Blocked(req.ClientIP, req.ASN, now)
	if blocked && (v.blockAll || req.Key == "") {
		d.Outcome = event.OutcomeBlockedIP
		return d
	}
	if req.Key == "" {
		r := d.Route
		if !r.Anonymous {
			d.Outcome = event.OutcomeMissing
			return d
		}
		d.Limited, d.Limit, d.WindowNs = true, r.anon.burst, r.anon.interval*int64(r.anon.burst)
		ok, rem, reset, retry := gcra(r.anon.cell(req.ClientIP), now, r.anon.interval, r.anon.burst)
		d.Remaining, d.ResetNs, d.RetryAfter = rem, reset, retry
		if !ok {
			d.Outcome = event.OutcomeRateLimited
			return d
		}
		d.Outcome = event.OutcomeValid
		return d
	}
	sec, err := keys.Parse(req.Key)
	if err != nil {
		d.Outcome = blockedOr(blocked, event.OutcomeMalformed)
		return d
	}
	h := sec.Hash()
	slot := v.table.Lookup(&h)
	if slot == nil {
		d.Outcome = blockedOr(blocked, event.OutcomeUnknown)
		return d
	}
	rec := slot.Record()
	if rec == nil {
		d.Outcome = blockedOr(blocked, event.OutcomeUnknown)
		return d
	}
	d.Record, d.slot = rec, slot
	if blocked && !usable(rec, now) {
		// Revoked, suspended, expired: not a valid key.
		d.Outcome = event.OutcomeBlockedIP
		return d
	}
	d.Outcome = v.check(rec, slot, &d, req, now)
	return d
}

func blockedOr(blocked bool, o event.Outcome) event.Outcome {
	if blocked {
		return event.OutcomeBlockedIP
	}
	return o
}

// usable reports whether rec is an active key, neither expired nor past
// its rotation grace: what a block lets through (see Verify).
func usable(rec *keys.Record, now int64) bool {
	return rec.Status == keys.StatusActive && (rec.ExpiresAt == 0 || now < rec.ExpiresAt) && (rec.GraceUntil == 0 || now < rec.GraceUntil)
}

func (v *Verifier) check(rec *keys.Record, slot *keys.Slot, d *Decision, req *Request, now int64) event.Outcome {
	switch rec.Status {
	case keys.StatusActive:
	case keys.StatusSuspended:
		return event.OutcomeSuspended
	case keys.StatusRevoked, keys.StatusDeleted:
		return event.OutcomeRevoked
	default:
		return event.OutcomeUnknown
	}
	if rec.ExpiresAt != 0 && now >= rec.ExpiresAt {
		return event.OutcomeExpired
	}
	if rec.GraceUntil != 0 && now >= rec.GraceUntil {
		// Rotated out and the grace period is over.
		return event.OutcomeExpired
	}
	if l := rec.Limits; l != nil {
		if !rec.AllowsIP(req.ClientIP) {
			return event.OutcomeIPDenied
		}
		if !rec.HasScope(d.Route.Scope) {
			return event.OutcomeScopeDenied
		}
		if l.ThrottleInterval > 0 && now < l.ThrottleUntil {
			ok, rem, reset, retry := gcra(&slot.ThrottleTAT, now, l.ThrottleInterval, 1)
			if !ok {
				d.Limited, d.Limit, d.Remaining, d.WindowNs, d.ResetNs, d.RetryAfter = true, 1, rem, l.ThrottleInterval, reset, retry
				return event.OutcomeThrottled
			}
		}
	} else if d.Route.Scope != "" {
		return event.OutcomeScopeDenied
	}
	if rec.RateInterval > 0 {
		ok, rem, reset, retry := gcra(&slot.RateTAT, now, rec.RateInterval, rec.Burst)
		d.Limited, d.Limit, d.Remaining, d.WindowNs, d.ResetNs, d.RetryAfter = true, rec.Burst, rem, rec.RateInterval*int64(rec.Burst), reset, retry
		if !ok {
			return event.OutcomeRateLimited
		}
	}
	if rec.MonthlyQuota > 0 {
		start, next := v.period.at(now)
		used, state := rec.QuotaUsed, rec.QuotaState
		if rec.QuotaPeriodStart < start {
			// A new period began and the aggregator has not published the
			// key's usage for it yet: what it published is about the last
			// period and must not keep the key refused.
			used, state = 0, keys.QuotaUnspecified
		}
		if state == keys.QuotaExceeded || used+slot.Used.Load() >= rec.MonthlyQuota {
			d.RetryAfter = next - now
			return event.OutcomeQuotaExceeded
		}
		slot.Used.Add(1)
	}
	return event.OutcomeValid
}

// quotaPeriod tracks the current quota period (UTC calendar month or day,
// as the aggregator's --quota-period), recomputed only when it ends.
type quotaPeriod struct {
	day   bool
	mu    sync.Mutex
	start atomic.Int64
	end   atomic.Int64
}

func (p *quotaPeriod) at(now int64) (start, end int64) {
	if s, e := p.start.Load(), p.end.Load(); now >= s && now < e {
		return s, e
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t := time.Unix(0, now).UTC()
	var s, e time.Time
	if p.day {
		s = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		e = s.AddDate(0, 0, 1)
	} else {
		s = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		e = s.AddDate(0, 1, 0)
	}
	if now >= p.start.Load() { // never move a shared period backwards for a late request
		p.start.Store(s.UnixNano())
		p.end.Store(e.UnixNano())
	}
	return s.UnixNano(), e.UnixNano()
}
