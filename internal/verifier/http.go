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
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/event"
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
	// HeaderAuthRequest: "nginx" asks the forward-auth endpoint to answer
	// 429s as 403 (nginx treats anything but 2xx/401/403 as an error).
	HeaderAuthRequest = "X-Keymeter-Auth-Request"
)

// HTTPConfig configures the HTTP fronts.
type HTTPConfig struct {
	// QueryParam is a query parameter that may carry the key ("" to
	// disable). It is removed before the request is forwarded or logged.
	QueryParam string
	// TrustedProxies are the peers whose X-Forwarded-For / X-Real-IP are
	// believed. The forward-auth endpoint's callers must be listed.
	TrustedProxies []netip.Prefix
	// CountryHeader is a CDN header carrying the client's country
	// (e.g. CF-IPCountry); "" to ignore.
	CountryHeader string
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
}

// NewServer returns the fronts of v. em and m may be nil.
func NewServer(v *Verifier, em *Emitter, m *Metrics, cfg HTTPConfig) *Server {
	s := &Server{v: v, em: em, m: m, cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
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

// withoutParam returns raw with every occurrence of param removed.
func withoutParam(raw, param string) string {
	var b strings.Builder
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		if k, _, _ := strings.Cut(kv, "="); k == param {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(kv)
	}
	return b.String()
}

// clientIP returns the client address: the peer, or, when the peer is a
// trusted proxy, the last untrusted address of X-Forwarded-For (or
// X-Real-IP). The string is a slice of the request's own data.
func (s *Server) clientIP(r *http.Request) (netip.Addr, string) {
	host := r.RemoteAddr
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || !s.trusted(peer) {
		return peer.Unmap(), host
	}
	if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		all := strings.Join(xff, ",")
		for all != "" {
			i := strings.LastIndexByte(all, ',')
			cand := strings.TrimSpace(all[i+1:])
			all = all[:max(i, 0)]
			a, err := netip.ParseAddr(cand)
			if err != nil {
				break
			}
			if !s.trusted(a) || i < 0 {
				return a.Unmap(), cand
			}
		}
	}
	if xr := r.Header.Get("X-Real-Ip"); xr != "" {
		if a, err := netip.ParseAddr(xr); err == nil {
			return a.Unmap(), xr
		}
	}
	return peer.Unmap(), host
}

func (s *Server) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
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
	h["Ratelimit-Policy"] = []string{`"key";q=` + strconv.FormatUint(uint64(d.Limit), 10) + `;w=` + strconv.FormatInt(w, 10)}
	h["Ratelimit"] = []string{`"key";r=` + strconv.FormatUint(uint64(d.Remaining), 10) + `;t=` + strconv.FormatInt(ceilSeconds(d.ResetNs), 10)}
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
func (s *Server) decide(r *http.Request, path string, start time.Time) (Decision, client, bool) {
	key, fromQuery := ExtractKey(r.Header, r.URL.RawQuery, s.cfg.QueryParam)
	ip, ipStr := s.clientIP(r)
	req := Request{Key: key, ClientIP: ip, Method: r.Method, Path: path, Now: start.UnixNano()}
	d := s.v.Verify(&req)
	if s.m != nil {
		s.m.verify.Observe(time.Since(start).Seconds())
		s.m.decisions[d.Outcome].Inc()
	}
	if s.log.Enabled(r.Context(), slog.LevelDebug) {
		// Never the key: its id and the display prefix of what was sent.
		s.log.Debug("decision", "outcome", d.Outcome.String(), "key_id", d.KeyID(), "project", d.Project(),
			"client_ip", ipStr, "method", r.Method, "path", path)
	}
	return d, client{ip, ipStr}, fromQuery
}

// client is the request's client address, parsed and as sent.
type client struct {
	addr netip.Addr
	str  string
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
	if s.cfg.CountryHeader != "" {
		if c := r.Header.Get(s.cfg.CountryHeader); len(c) == 2 {
			ev.Country = strings.ToUpper(c)
		}
	}
	if s.cfg.ASNHeader != "" {
		if a := strings.TrimPrefix(strings.TrimPrefix(r.Header.Get(s.cfg.ASNHeader), "AS"), "as"); a != "" {
			if n, err := strconv.ParseUint(a, 10, 32); err == nil {
				ev.ASN = uint32(n)
			}
		}
	}
	if s.cfg.Geo != nil && (ev.Country == "" || ev.ASN == 0) {
		c, asn := s.cfg.Geo.Lookup(ip.addr)
		if ev.Country == "" {
			ev.Country = c
		}
		if ev.ASN == 0 {
			ev.ASN = asn
		}
	}
	if s.emitHook != nil {
		s.emitHook(&ev)
	}
	if s.em != nil {
		s.em.Emit(&ev)
	}
}

// Middleware verifies every request before next. Allowed requests reach
// next with X-Keymeter-Key-Id / X-Keymeter-Project set (client-supplied
// ones removed) and the query-parameter key stripped; every request, allowed
// or not, becomes a usage event with next's status and byte counts.
func (s *Server) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		path := r.URL.Path
		d, ip, fromQuery := s.decide(r, path, start)
		if !d.Allowed() {
			st := StatusCode(d.Outcome)
			WriteRefusal(w, &d, st)
			s.emit(r, &d, path, ip, start, st, r.ContentLength, int64(len(outcomeBodies[d.Outcome])))
			return
		}
		delete(r.Header, HeaderKeyID) // canonical already: no CanonicalMIMEHeaderKey
		delete(r.Header, HeaderProject)
		if d.Record != nil {
			r.Header[HeaderKeyID] = []string{d.Record.ID}
			r.Header[HeaderProject] = []string{d.Record.Project}
		}
		if fromQuery {
			u := *r.URL
			u.RawQuery = withoutParam(u.RawQuery, s.cfg.QueryParam)
			r2 := *r
			r2.URL = &u
			r2.RequestURI = u.RequestURI()
			r = &r2
		}
		setLimitHeaders(w.Header(), &d)
		body := &countingBody{ReadCloser: r.Body}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = body
		}
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		if s.m != nil {
			s.m.upstream.Observe(time.Since(start).Seconds())
		}
		s.emit(r, &d, path, ip, start, rec.status, body.n, rec.bytes)
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

// Proxy returns the reverse proxy to upstream behind the middleware.
func (s *Server) Proxy(upstream *url.URL) http.Handler {
	rp := &httputil.ReverseProxy{
		Transport: UpstreamTransport(),
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.SetXForwarded()
			pr.Out.Host = pr.In.Host
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
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
// The original request is described by X-Forwarded-Method/-Uri/-Host
// (Traefik, Caddy), X-Original-Method/-Uri (nginx, as in the example
// config), or, for Envoy, the request itself with mountPrefix stripped
// from its path. 200 carries X-Keymeter-Key-Id / X-Keymeter-Project for the
// proxy to pass on; a refusal carries the status, JSON body and headers the
// client should get. nginx only distinguishes 2xx, 401 and 403, so with
// X-Keymeter-Auth-Request: nginx a 429 is answered 403 with the real status
// in X-Keymeter-Status.
func (s *Server) ForwardAuth(mountPrefix string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		method, uri := r.Method, r.URL.RequestURI()
		if m := firstHeader(r.Header, "X-Forwarded-Method", "X-Original-Method"); m != "" {
			method = m
		}
		if u := firstHeader(r.Header, "X-Forwarded-Uri", "X-Original-Uri"); u != "" {
			uri = u
		} else if mountPrefix != "" {
			uri = strings.TrimPrefix(uri, strings.TrimSuffix(mountPrefix, "/"))
			if uri == "" || uri[0] != '/' {
				uri = "/" + uri
			}
		}
		path, rawQuery, _ := strings.Cut(uri, "?")
		orig := *r
		orig.Method = method
		ou := url.URL{Path: path, RawQuery: rawQuery}
		orig.URL = &ou
		if h := r.Header.Get("X-Forwarded-Host"); h != "" {
			orig.Host = h
		}
		d, ip, _ := s.decide(&orig, path, start)
		st := StatusCode(d.Outcome)
		if d.Allowed() {
			h := w.Header()
			setLimitHeaders(h, &d)
			// Always present, empty for anonymous requests, so that a proxy
			// copying them replaces whatever the client sent.
			h[HeaderKeyID] = []string{d.KeyID()}
			h[HeaderProject] = []string{d.Project()}
			h[HeaderOutcome] = []string{d.Outcome.String()}
			w.WriteHeader(http.StatusOK)
		} else {
			code := st
			if code == http.StatusTooManyRequests && strings.EqualFold(r.Header.Get(HeaderAuthRequest), "nginx") {
				code = http.StatusForbidden
			}
			w.Header()[HeaderStatus] = []string{strconv.Itoa(st)}
			WriteRefusal(w, &d, code)
		}
		// The forward-auth caller sees the decision, not the upstream: the
		// event carries the decision's status.
		s.emit(&orig, &d, path, ip, start, st, orig.ContentLength, 0)
	})
}

func firstHeader(h http.Header, names ...string) string {
	for _, n := range names {
		if v := h.Get(n); v != "" {
			return v
		}
	}
	return ""
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
type recorder struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
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
		return h.Hijack()
	}
	return nil, nil, errors.New("verifier: response writer cannot hijack")
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}
