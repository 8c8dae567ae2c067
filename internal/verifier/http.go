package verifier

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/keys"
)

// Headers the verifier sets for the upstream (and the forward-auth
// caller). Client-supplied values of these are always removed.
const (
	HeaderKeyID   = "X-Keymeter-Key-Id"
	HeaderProject = "X-Keymeter-Project"
	HeaderOutcome = "X-Keymeter-Outcome"
	// HeaderStatus carries the real status when a forward-auth caller can
	// only take 401/403 (nginx auth_request): see ForwardAuth.
	HeaderStatus = "X-Keymeter-Status"
)

// DefaultBodyTimeout bounds the time a request body may take to arrive
// when HTTPConfig.BodyTimeout is zero.
const DefaultBodyTimeout = 60 * time.Second

// HTTPConfig configures the HTTP fronts.
type HTTPConfig struct {
	// QueryParam is a query parameter that may carry the key ("" to
	// disable), in proxy mode only. It is removed before the request is
	// forwarded or logged. Forward auth never reads it.
	QueryParam string
	// TrustedProxies are the proxies whose forwarding header is believed
	// (see ClientAddr). The forward-auth endpoint's callers must be listed.
	TrustedProxies []netip.Prefix
	// ForwardedHeader is the header ClientAddr walks: X-Forwarded-For (the
	// default, "") or Forwarded (RFC 7239). No other header is read.
	ForwardedHeader string
	// Front describes the proxy calling the forward-auth endpoint: the
	// only headers the original method, URI and host are read from. The
	// endpoint answers 500 while it is not set.
	Front Front
	// BodyTimeout bounds the time an allowed request's body may take to
	// arrive (DefaultBodyTimeout when zero). Refusals and forward-auth
	// answers never read the body.
	BodyTimeout time.Duration
	// CountryHeader is a CDN header carrying the client's country
	// (e.g. CF-IPCountry); "" to ignore.
	CountryHeader string
	// TunnelCheck is how often the keys of upgraded connections
	// (WebSocket) are checked: a tunnel whose key was revoked, suspended
	// or expired is closed (DefaultTunnelCheck when zero).
	TunnelCheck time.Duration
	// ASNHeader is a header carrying the client's autonomous system number
	// (set by a CDN or an edge worker); "" to ignore.
	ASNHeader string
	// Geo fills country and AS number from MaxMind-format databases when
	// the headers above do not; nil for none.
	Geo *Geo
	// VerifierID goes into every event.
	VerifierID string
	Logger     *slog.Logger
}

// Server runs the fronts around one Verifier.
type Server struct {
	v  *Verifier
	em *Emitter // nil: no emission
	// emitHook, in tests, sees every event built.
	emitHook func(*event.Event)
	m        *Metrics
	cfg      HTTPConfig
	log      *slog.Logger
	share    *RateShare // nil: rate limits are per verifier
	tunnels  *tunnels
}

// ShareRates reports the admissions of rate-limited keys to rs (global
// rate limits, see RateShare). Call before serving.
func (s *Server) ShareRates(rs *RateShare) { s.share = rs }

// NewServer returns the fronts of v. em and m may be nil.
func NewServer(v *Verifier, em *Emitter, m *Metrics, cfg HTTPConfig) *Server {
	s := &Server{v: v, em: em, m: m, cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.tunnels = newTunnels(cfg.TunnelCheck, s.log)
	if m != nil {
		m.tunnels.Store(s.tunnels)
	}
	return s
}

// ExtractKey finds the credential: Authorization: Bearer, then X-API-Key,
// then the query parameter (fromQuery true).
func ExtractKey(h http.Header, rawQuery, param string) (key string, fromQuery bool) {
	if a := h.Get("Authorization"); a != "" {
		if len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
			return strings.TrimSpace(a[7:]), false
		}
		// Another scheme: still a credential attempt, never anonymous.
		return a, false
	}
	if k := h.Get("X-Api-Key"); k != "" {
		return k, false
	}
	if param != "" && rawQuery != "" {
		if v, ok := queryValue(rawQuery, param); ok && v != "" {
			return v, true
		}
	}
	return "", false
}

// queryValue finds param in a raw query without building url.Values.
func queryValue(raw, param string) (string, bool) {
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k == param {
			if strings.ContainsAny(v, "%+") {
				u, err := url.QueryUnescape(v)
				if err != nil {
					return "", false
				}
				v = u
			}
			return v, true
		}
	}
	return "", false
}

// isParam reports whether the raw query name k is param, as sent or once
// unescaped (an upstream decodes api%5Fkey to api_key).
func isParam(k, param string) bool {
	if k == param {
		return true
	}
	if strings.ContainsAny(k, "%+") {
		u, err := url.QueryUnescape(k)
		return err == nil && u == param
	}
	return false
}

// hasParam reports whether raw carries param (see isParam).
func hasParam(raw, param string) bool {
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		if k, _, _ := strings.Cut(kv, "="); isParam(k, param) {
			return true
		}
	}
	return false
}

// withoutParam returns raw with every occurrence of param removed (see
// isParam).
func withoutParam(raw, param string) string {
	var b strings.Builder
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		if k, _, _ := strings.Cut(kv, "="); isParam(k, param) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(kv)
	}
	return b.String()
}

// keymeterPrefix is what the name of every header keymeter sets for the
// upstream starts with (HeaderKeyID, HeaderProject, ...), lower case.
const keymeterPrefix = "x-keymeter-"

// isKeymeterHeader reports whether a header name is, or reads as, one
// keymeter sets: it starts with X-Keymeter- ignoring ASCII case and with
// '_' (or any other character that is not a letter or digit) read as '-'.
// CGI, WSGI (PEP 3333), Rack and PHP turn both '-' and '_' into '_'
// (HTTP_X_KEYMETER_KEY_ID), and some gateways every other punctuation
// too, so X_Keymeter_Key_Id from a client would otherwise reach such an
// upstream as the identity.
func isKeymeterHeader(name string) bool {
	if len(name) < len(keymeterPrefix) {
		return false
	}
	for i := 0; i < len(keymeterPrefix); i++ {
		c := lower(name[i])
		if !isAlnum(c) {
			c = '-'
		}
		if c != keymeterPrefix[i] {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// oddSpelling reports whether name has a character other than a letter,
// digit or '-' (the spellings a proxy's exact-name overwrite misses).
func oddSpelling(name string) bool {
	for i := 0; i < len(name); i++ {
		if c := name[i]; c != '-' && !isAlnum(c) {
			return true
		}
	}
	return false
}

// stripKeymeterHeaders removes from h every header that reads as one of
// keymeter's (isKeymeterHeader).
func stripKeymeterHeaders(h http.Header) {
	for name := range h {
		if isKeymeterHeader(name) {
			delete(h, name)
		}
	}
}

// underscoreKeymeterHeader returns the first header of h that reads as one
// of keymeter's but is spelled with an underscore (or other punctuation), ""
// if none: in forward auth keymeter cannot remove it, and the proxy
// overwrites only the exact spelling.
func underscoreKeymeterHeader(h http.Header) string {
	for name := range h {
		if oddSpelling(name) && isKeymeterHeader(name) {
			return name
		}
	}
	return ""
}

// outcomeBodies are the JSON refusal bodies, built once.
var outcomeBodies = func() map[event.Outcome][]byte {
	msgs := map[event.Outcome]string{
		event.OutcomeMissing:       "an API key is required: send it as Authorization: Bearer <key> or X-API-Key",
		event.OutcomeMalformed:     "the API key is malformed or its checksum does not match",
		event.OutcomeUnknown:       "the API key is not known",
		event.OutcomeRevoked:       "the API key has been revoked",
		event.OutcomeExpired:       "the API key has expired",
		event.OutcomeSuspended:     "the API key is suspended",
		event.OutcomeIPDenied:      "the API key may not be used from this address",
		event.OutcomeScopeDenied:   "the API key does not grant the scope this route requires",
		event.OutcomeRateLimited:   "rate limit exceeded; retry after the time in Retry-After",
		event.OutcomeQuotaExceeded: "the API key's monthly quota is used up",
		event.OutcomeThrottled:     "the API key is throttled; retry after the time in Retry-After",
		event.OutcomeBlockedIP:     "requests from this address are blocked",
	}
	out := map[event.Outcome][]byte{}
	for o, m := range msgs {
		out[o] = fmt.Appendf(nil, `{"error":{"code":%q,"status":%d,"message":%q}}`+"\n", o.String(), StatusCode(o), m)
	}
	return out
}()

func ceilSeconds(ns int64) int64 { return (ns + int64(time.Second) - 1) / int64(time.Second) }

// setLimitHeaders sets RateLimit / RateLimit-Policy (IETF
// draft-ietf-httpapi-ratelimit-headers, structured-field form).
func setLimitHeaders(h http.Header, d *Decision) {
	if !d.Limited {
		return
	}
	w := max(1, ceilSeconds(d.WindowNs))
	// Both values in one string and both header slices in one array: two
	// allocations per limited request instead of six (profiled hot path).
	var buf [96]byte
	b := append(buf[:0], `"key";q=`...)
	b = strconv.AppendUint(b, uint64(d.Limit), 10)
	b = append(b, ";w="...)
	b = strconv.AppendInt(b, w, 10)
	n := len(b)
	b = append(b, `"key";r=`...)
	b = strconv.AppendUint(b, uint64(d.Remaining), 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, ceilSeconds(d.ResetNs), 10)
	both := string(b)
	vals := &[2]string{both[:n], both[n:]}
	h["Ratelimit-Policy"] = vals[0:1:1]
	h["Ratelimit"] = vals[1:2:2]
}

// WriteRefusal writes the refusal of a denied decision: status, JSON body,
// Retry-After and rate-limit headers.
func WriteRefusal(w http.ResponseWriter, d *Decision, status int) {
	h := w.Header()
	setLimitHeaders(h, d)
	h["Content-Type"] = []string{"application/json"}
	h["Cache-Control"] = []string{"no-store"}
	h[HeaderOutcome] = []string{d.Outcome.String()}
	if StatusCode(d.Outcome) == http.StatusUnauthorized {
		h["Www-Authenticate"] = []string{`Bearer realm="keymeter", error="invalid_token"`}
	}
	if d.RetryAfter > 0 {
		h["Retry-After"] = []string{strconv.FormatInt(max(1, ceilSeconds(d.RetryAfter)), 10)}
	}
	w.WriteHeader(status)
	_, _ = w.Write(outcomeBodies[d.Outcome])
}

// decide verifies r and records the decision in the metrics.
// queryParam is where a key may come from in the query ("" for none).
func (s *Server) decide(r *http.Request, path string, start time.Time, queryParam string) (Decision, client, bool) {
	key, fromQuery := ExtractKey(r.Header, r.URL.RawQuery, queryParam)
	ip, ipStr := s.clientIP(r)
	c := client{addr: ip, str: ipStr}
	if s.v.blocks.HasASNs() {
		// An ASN block needs the request's AS number before the decision
		// (the event reuses it).
		c.country, c.asn = s.origin(r, ip)
		c.origin = true
	}
	req := Request{Key: key, ClientIP: ip, ASN: c.asn, Method: r.Method, Path: path, Now: start.UnixNano()}
	d := s.v.Verify(&req)
	if s.share != nil && d.Allowed() && d.Record != nil && d.Record.RateInterval > 0 {
		s.share.Note(d.Record.ID)
	}
	if s.m != nil {
		s.m.verify.Observe(time.Since(start).Seconds())
		s.m.decisions[d.Outcome].Inc()
	}
	if s.log.Enabled(r.Context(), slog.LevelDebug) {
		// Never the key: its id and the display prefix of what was sent.
		s.log.Debug("decision", "outcome", d.Outcome.String(), "key_id", d.KeyID(), "project", d.Project(),
			"client_ip", ipStr, "method", r.Method, "path", path)
	}
	return d, c, fromQuery
}

// client is the request's client address, parsed and as sent, and, when
// origin is set, its country and AS number (see Server.origin).
type client struct {
	addr    netip.Addr
	str     string
	origin  bool
	country string
	asn     uint32
}

// origin is the country and AS number of a request from ip: the
// configured headers first, then the MaxMind databases ("" and 0 when
// unknown).
func (s *Server) origin(r *http.Request, ip netip.Addr) (country string, asn uint32) {
	if s.cfg.CountryHeader != "" {
		if c := r.Header.Get(s.cfg.CountryHeader); len(c) == 2 {
			country = strings.ToUpper(c)
		}
	}
	if s.cfg.ASNHeader != "" {
		if a := strings.TrimPrefix(strings.TrimPrefix(r.Header.Get(s.cfg.ASNHeader), "AS"), "as"); a != "" {
			if n, err := strconv.ParseUint(a, 10, 32); err == nil {
				asn = uint32(n)
			}
		}
	}
	if s.cfg.Geo != nil && (country == "" || asn == 0) {
		c, n := s.cfg.Geo.Lookup(ip)
		if country == "" {
			country = c
		}
		if asn == 0 {
			asn = n
		}
	}
	return country, asn
}

func (s *Server) emit(r *http.Request, d *Decision, path string, ip client, start time.Time, status int, bytesIn, bytesOut int64) {
	if s.em == nil && s.emitHook == nil {
		return
	}
	ev := event.Event{
		Time: start, Project: d.Project(), KeyID: d.KeyID(), Outcome: d.Outcome,
		ClientIP: ip.str, Method: r.Method, Host: r.Host, Route: path, Status: uint16(status),
		LatencyUS: uint32(time.Since(start) / time.Microsecond),
		BytesIn:   uint64(max(bytesIn, 0)), BytesOut: uint64(max(bytesOut, 0)),
		UserAgent: r.UserAgent(), VerifierID: s.cfg.VerifierID, CostUnits: d.Route.CostUnits,
	}
	if ip.origin {
		ev.Country, ev.ASN = ip.country, ip.asn
	} else {
		ev.Country, ev.ASN = s.origin(r, ip.addr)
	}
	boundEvent(&ev) // client-chosen strings: bounded (fields.go)
	if s.emitHook != nil {
		seen := ev // a copy for the hook, so that ev itself stays on the stack
		s.emitHook(&seen)
	}
	if s.em != nil {
		s.em.Emit(&ev)
	}
}

// Middleware verifies every request before next. Allowed requests reach
// next with X-Keymeter-Key-Id / X-Keymeter-Project set (client-supplied
// ones removed) and the query-parameter key stripped; every request, allowed
// or not, becomes a usage event with next's status and byte counts. A
// refusal is answered without reading the request body (the connection is
// then closed); an allowed request's body must arrive within BodyTimeout.
// Routes are matched on the decoded path; a path the upstream could
// resolve to another one is answered 400 without a decision (see
// routePath).
func (s *Server) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		// The path as it is forwarded (ReverseProxy joins EscapedPath).
		path, ok := routePath(r.URL.EscapedPath())
		if !ok {
			if r.URL.Path != "*" {
				// Never decided on: the upstream could resolve it to
				// another path than the one matched (see routePath).
				stop := closeUnreadBody(w, r)
				badPath(w, http.StatusBadRequest)
				stop()
				return
			}
			path = r.URL.Path // OPTIONS *: no route matches, a key is required
		}
		d, ip, fromQuery := s.decide(r, path, start, s.cfg.QueryParam)
		if !d.Allowed() {
			st := StatusCode(d.Outcome)
			stop := closeUnreadBody(w, r)
			WriteRefusal(w, &d, st)
			stop()
			s.emit(r, &d, path, ip, start, st, 0, int64(len(outcomeBodies[d.Outcome])))
			return
		}
		// Every client header that is, or reads as, one of keymeter's
		// (X_Keymeter_Key_Id reaches CGI/WSGI/Rack as HTTP_X_KEYMETER_KEY_ID,
		// the same variable as X-Keymeter-Key-Id): see isKeymeterHeader.
		stripKeymeterHeaders(r.Header)
		if d.Record != nil {
			ids := &[2]string{d.Record.ID, d.Record.Project} // one allocation for both
			r.Header[HeaderKeyID] = ids[0:1:1]
			r.Header[HeaderProject] = ids[1:2:2]
		}
		// The query parameter goes whether or not the key came from it: a
		// request with a header key may carry a secret there too.
		if p := s.cfg.QueryParam; p != "" && r.URL.RawQuery != "" && (fromQuery || hasParam(r.URL.RawQuery, p)) {
			u := *r.URL
			u.RawQuery = withoutParam(u.RawQuery, p)
			r2 := *r
			r2.URL = &u
			r2.RequestURI = u.RequestURI()
			r = &r2
		}
		setLimitHeaders(w.Header(), &d)
		// The body counter and the response recorder in one allocation.
		pr := &proxied{body: countingBody{ReadCloser: r.Body}, rec: recorder{ResponseWriter: w, status: http.StatusOK}}
		body := &pr.body
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = body
			if r.ContentLength != 0 {
				// The body must arrive in time; once it has, the deadline
				// goes, so that it cannot cancel a slow upstream's answer.
				rc := http.NewResponseController(w)
				if dl := start.Add(s.cfg.bodyTimeout()); rc.SetReadDeadline(dl) == nil {
					body.deadline = dl
					body.onEOF = func() { _ = rc.SetReadDeadline(time.Time{}) }
					// For the proxy's error handler, which sees a copy.
					r = r.WithContext(context.WithValue(r.Context(), bodyKey{}, body))
				}
			}
		}
		rec := &pr.rec
		// An upgraded connection stays open only while the key may be used
		// and is closed at shutdown, before the events are flushed (see
		// tunnels).
		rec.tunnels, rec.slot = s.tunnels, d.slot
		defer rec.untrack() // after the event, and when the handler panics
		next.ServeHTTP(rec, r)
		if s.m != nil {
			s.m.upstream.Observe(time.Since(start).Seconds())
		}
		s.emit(r, &d, path, ip, start, rec.status, body.n, rec.bytes)
	})
}

// closeUnreadBody prepares an answer that leaves the request body unread:
// Connection: close, so that net/http does not drain the body before
// replying, and, once the answer is written (call the returned func), a
// read deadline in the past, so that it does not drain it afterwards
// either. A slow client cannot hold the connection.
func closeUnreadBody(w http.ResponseWriter, r *http.Request) func() {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return func() {}
	}
	w.Header()["Connection"] = []string{"close"}
	return func() { _ = http.NewResponseController(w).SetReadDeadline(time.Now()) }
}

func (c *HTTPConfig) bodyTimeout() time.Duration {
	if c.BodyTimeout > 0 {
		return c.BodyTimeout
	}
	return DefaultBodyTimeout
}

func (c *HTTPConfig) forwarded() bool { return strings.EqualFold(c.ForwardedHeader, HeaderForwarded) }

// NoBody wraps handlers that never read a request body (admin endpoints):
// a request with one is answered without reading it, and the connection
// closed.
func NoBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stop := closeUnreadBody(w, r)
		defer stop()
		h.ServeHTTP(w, r)
	})
}

// UpstreamTransport is the transport to the upstream: http.DefaultTransport
// keeps only 2 idle connections per host, so under concurrency most
// requests would dial a new connection.
func UpstreamTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 4096
	t.MaxIdleConnsPerHost = 1024
	return t
}

// bufferPool is an httputil.BufferPool of 32 KiB buffers.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) >= 32<<10 {
		buf = buf[:32<<10]
		b.p.Put(&buf)
	}
}

var copyBuffers = &bufferPool{}

// CopyBufferPool is the pool of 32 KiB copy buffers the verifier's reverse
// proxy uses (for benchmarks that compare it with a bare proxy).
func CopyBufferPool() httputil.BufferPool { return copyBuffers }

// Proxy returns the reverse proxy to upstream behind the middleware. The
// upstream gets X-Forwarded-For set to the client address (ClientAddr),
// X-Forwarded-Host and -Proto, and no X-Real-Ip or Forwarded.
func (s *Server) Proxy(upstream *url.URL) http.Handler {
	rp := &httputil.ReverseProxy{
		Transport: UpstreamTransport(),
		// Without a pool, ReverseProxy allocates a 32 KiB copy buffer for
		// every response (profiled: the largest allocation per request).
		BufferPool: copyBuffers,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.SetXForwarded()
			pr.Out.Host = pr.In.Host
			// The upstream learns the client address keymeter decided and
			// metered on (ClientAddr), not what the client claimed.
			_, client := s.clientIP(pr.In)
			pr.Out.Header["X-Forwarded-For"] = []string{client}
			delete(pr.Out.Header, "X-Real-Ip")
			delete(pr.Out.Header, "Forwarded")
			// The identity the middleware set, again: ReverseProxy drops
			// the headers a client names in Connection before Rewrite
			// ("Connection: X-Keymeter-Key-Id" would strip it). Any other
			// header that reads as keymeter's goes (the middleware removed
			// them already; a handler in between could add one).
			stripKeymeterHeaders(pr.Out.Header)
			for _, h := range [...]string{HeaderKeyID, HeaderProject} {
				if v, ok := pr.In.Header[h]; ok {
					pr.Out.Header[h] = v
				} else {
					delete(pr.Out.Header, h)
				}
			}
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if cb, ok := r.Context().Value(bodyKey{}).(*countingBody); errors.Is(err, os.ErrDeadlineExceeded) || (ok && cb.timedOut()) {
				// The request body did not arrive within BodyTimeout.
				w.Header().Set("Connection", "close")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusRequestTimeout)
				_, _ = io.WriteString(w, `{"error":{"code":"request_timeout","status":408,"message":"the request body did not arrive in time"}}`+"\n")
				return
			}
			if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
				// The client went away: nothing to answer, nothing wrong
				// upstream. 499 (nginx's "client closed request") in the event.
				w.WriteHeader(499)
				return
			}
			s.log.Warn("upstream unreachable", "err", err, "upstream", upstream.Redacted())
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, `{"error":{"code":"bad_gateway","status":502,"message":"the upstream API did not answer"}}`+"\n")
		},
	}
	return s.Middleware(rp)
}

// ForwardAuth answers forward-auth subrequests: nginx auth_request, Envoy
// ext_authz (HTTP service), Traefik ForwardAuth and Caddy forward_auth.
// The original method, URI and host come only from the headers of the
// configured Front (HTTPConfig.Front), or, for Envoy, from the subrequest
// itself with mountPrefix stripped from its path; the client address from
// ClientAddr, as in every mode. A subrequest that lacks a front header, or
// carries one twice, is answered 500 (the proxy is not configured as
// documented) or 400 (a value that is not a method or an absolute path),
// never decided on. 200 carries X-Keymeter-Key-Id / X-Keymeter-Project for
// the proxy to pass on; a refusal carries the status, JSON body and headers
// the client should get. nginx only distinguishes 2xx, 401 and 403, so for
// the nginx front a 429 is answered 403 with the real status in
// X-Keymeter-Status. The subrequest's body is never read.
func (s *Server) ForwardAuth(mountPrefix string) http.Handler {
	f := s.cfg.Front
	var names [3]string // method, URI, host headers, canonical
	for i, n := range []string{f.MethodHeader, f.URIHeader, f.HostHeader} {
		if n != "" {
			names[i] = textproto.CanonicalMIMEHeaderKey(n)
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		stop := closeUnreadBody(w, r)
		defer stop()
		if f.Name == "" {
			fwdError(w, http.StatusInternalServerError, "no forward-auth front is configured (--front)")
			return
		}
		method, uri, host, ok := s.originalRequest(w, r, &names, mountPrefix)
		if !ok {
			return
		}
		rawPath, rawQuery, _ := strings.Cut(uri, "?")
		path, ok := routePath(rawPath)
		if !ok {
			// Not decided on: the upstream gets the raw URI and could
			// resolve it to another path than the one matched. nginx
			// auth_request turns a 400 into a 500: for it, 403 with the
			// real status in X-Keymeter-Status, as for 429.
			code := http.StatusBadRequest
			if f.Deny403 {
				code = http.StatusForbidden
				w.Header()[HeaderStatus] = []string{"400"}
			}
			badPath(w, code)
			return
		}
		if name := underscoreKeymeterHeader(r.Header); name != "" {
			// The proxy forwards the client's headers as sent and replaces
			// only the exact X-Keymeter-* names from this answer: an
			// underscore spelling would reach a CGI/WSGI upstream as the
			// identity. Refused, never decided on (as a bad path).
			code := http.StatusBadRequest
			if f.Deny403 {
				code = http.StatusForbidden
				w.Header()[HeaderStatus] = []string{"400"}
			}
			badHeader(w, code, name)
			return
		}
		orig := *r
		orig.Method = method
		orig.URL = &url.URL{Path: path, RawQuery: rawQuery}
		orig.Host = host
		// Never a query-parameter key: the proxy forwards the original
		// URI, key included, which keymeter cannot strip (RunConfig
		// refuses --query-param for a forward-auth --listen).
		d, ip, _ := s.decide(&orig, path, start, "")
		st := StatusCode(d.Outcome)
		writeForwardAuth(w, &d, st, f.Deny403)
		// The forward-auth caller sees the decision, not the upstream: the
		// event carries the decision's status.
		s.emit(&orig, &d, path, ip, start, st, orig.ContentLength, 0)
	})
}

// originalRequest returns the method, URI and host of the request that the
// forward-auth subrequest r asks about: from the front's headers (names,
// canonical, "" for none), or from r itself with mountPrefix stripped. When
// they are missing or invalid it answers w and returns ok false.
func (s *Server) originalRequest(w http.ResponseWriter, r *http.Request, names *[3]string, mountPrefix string) (method, uri, host string, ok bool) {
	f := &s.cfg.Front
	method, uri, host = r.Method, r.URL.RequestURI(), r.Host
	if f.URIHeader == "" {
		// Envoy: the subrequest is the original request.
		uri = r.URL.EscapedPath()
		if mountPrefix != "" {
			uri = strings.TrimPrefix(uri, strings.TrimSuffix(mountPrefix, "/"))
			if uri == "" || uri[0] != '/' {
				uri = "/" + uri
			}
		}
		if r.URL.RawQuery != "" {
			uri += "?" + r.URL.RawQuery
		}
	}
	vals := [3]string{method, uri, host}
	for i, name := range names {
		if name == "" {
			continue
		}
		v, present, ok := headerOnce(r.Header, name)
		if !ok {
			what := "lacks"
			if present {
				what = "carries more than one"
			}
			s.log.Warn("forward-auth subrequest refused: the front is not configured as documented", "front", f.Name, "header", name, "problem", what)
			fwdError(w, http.StatusInternalServerError, fmt.Sprintf("the forward-auth subrequest %s %s header (front %s): configure the proxy as in deploy/proxy", what, name, f.Name))
			return "", "", "", false
		}
		vals[i] = v
	}
	method, uri, host = vals[0], vals[1], vals[2]
	if !validMethod(method) {
		fwdError(w, http.StatusBadRequest, "the original method is not an HTTP method token")
		return "", "", "", false
	}
	if uri != "" && uri[0] != '/' {
		// Absolute form (GET http://host/path HTTP/1.1), which nginx's
		// $request_uri keeps as sent: the path is what is routed.
		if u, err := url.Parse(uri); err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.Opaque == "" {
			uri = u.EscapedPath()
			if u.RawQuery != "" {
				uri += "?" + u.RawQuery
			}
		}
	}
	return method, uri, host, true
}

// writeForwardAuth answers a forward-auth subrequest with decision d of
// status st: 200 with the key's headers, or the refusal (a 429 as 403 when
// deny403, for nginx).
func writeForwardAuth(w http.ResponseWriter, d *Decision, st int, deny403 bool) {
	if d.Allowed() {
		h := w.Header()
		setLimitHeaders(h, d)
		// Always present, empty for anonymous requests, so that a proxy
		// copying them replaces whatever the client sent.
		vals := &[3]string{d.KeyID(), d.Project(), d.Outcome.String()} // one allocation for the three
		h[HeaderKeyID] = vals[0:1:1]
		h[HeaderProject] = vals[1:2:2]
		h[HeaderOutcome] = vals[2:3:3]
		w.WriteHeader(http.StatusOK)
		return
	}
	code := st
	if code == http.StatusTooManyRequests && deny403 {
		code = http.StatusForbidden
	}
	w.Header()[HeaderStatus] = []string{strconv.Itoa(st)}
	WriteRefusal(w, d, code)
}

// badPath answers a request path that is refused (see routePath).
func badPath(w http.ResponseWriter, status int) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Cache-Control"] = []string{"no-store"}
	h[HeaderOutcome] = []string{"bad_path"}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, `{"error":{"code":"bad_path","status":400,"message":"the request path has dot segments, empty segments, a backslash, a semicolon or an encoded slash, backslash, dot or percent sign"}}`+"\n")
}

// badHeader answers a forward-auth subrequest that carries name, a header
// spelled like one of keymeter's with underscores (see ForwardAuth).
func badHeader(w http.ResponseWriter, status int, name string) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Cache-Control"] = []string{"no-store"}
	h[HeaderOutcome] = []string{"bad_header"}
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"error":{"code":"bad_header","status":400,"message":%q}}`+"\n",
		"the request carries "+name+", an X-Keymeter-* header spelled with underscores: remove it (see headers_with_underscores in deploy/proxy)")
}

func fwdError(w http.ResponseWriter, status int, msg string) {
	w.Header()["Content-Type"] = []string{"application/json"}
	w.Header()["Cache-Control"] = []string{"no-store"}
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"error":{"code":"bad_forward_auth_request","status":%d,"message":%q}}`+"\n", status, msg)
}

// Health serves /healthz (alive) and /readyz (ready once the key table
// snapshot is loaded), and /metrics when m is not nil.
func (s *Server) Health(mux *http.ServeMux, metrics http.Handler) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.v.Table().Loaded() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "key table not loaded yet\n")
			return
		}
		_, _ = fmt.Fprintf(w, "ready: %d keys\n", s.v.Table().Len())
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
}

// recorder captures the status and size of the response.
// proxied is the per-request state of an allowed request.
type proxied struct {
	body countingBody
	rec  recorder
}

type recorder struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
	// tunnels tracks the connection if the handler hijacks it (tracked
	// is then set), with the key's slot (nil for anonymous requests).
	tunnels *tunnels
	slot    *keys.Slot
	tracked bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wroteHeader && code >= 200 {
		r.status, r.wroteHeader = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if h, ok := r.ResponseWriter.(http.Hijacker); ok {
		c, brw, err := h.Hijack()
		if err != nil {
			return c, brw, err
		}
		if !r.wroteHeader {
			// ReverseProxy hijacks on the upstream's 101 and writes it
			// to the connection itself: the event records the switch.
			r.status, r.wroteHeader = http.StatusSwitchingProtocols, true
		}
		if r.tunnels != nil {
			var id string
			if r.slot != nil {
				if rec := r.slot.Record(); rec != nil {
					id = rec.ID
				}
			}
			c, r.tracked = r.tunnels.add(c, r.slot, id), true
		}
		return c, brw, nil
	}
	return nil, nil, errors.New("verifier: response writer cannot hijack")
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// bodyKey is the context key of a request's *countingBody.
type bodyKey struct{}

type countingBody struct {
	io.ReadCloser
	n     int64
	onEOF func()
	// deadline is the body's (zero: none); eof is set once it was read to
	// the end. The transport may report a body deadline as the request
	// context's cancellation (net/http cancels it on the read error).
	deadline time.Time
	eof      atomic.Bool
}

// timedOut reports whether the body's deadline passed before its end.
func (b *countingBody) timedOut() bool {
	return !b.deadline.IsZero() && !b.eof.Load() && !time.Now().Before(b.deadline)
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	if err == io.EOF {
		b.eof.Store(true)
	}
	if err == io.EOF && b.onEOF != nil {
		b.onEOF()
		b.onEOF = nil
	}
	return n, err
}

// untrack tells the tunnels that the handler of a tracked (hijacked)
// connection is done, its event emitted. It runs deferred, so that a
// handler that panics (ReverseProxy aborts with http.ErrAbortHandler)
// does not leave shutdown, which waits for every tracked tunnel, waiting
// out its whole grace.
func (r *recorder) untrack() {
	if r.tracked {
		r.tunnels.done()
	}
}
