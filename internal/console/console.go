// Package console is keymeter's web console: server-rendered pages
// (html/template) served by the API on its own listener under /console.
//
// The console holds no data and no privileges of its own. A person signs in
// with an admin token; the session (an HttpOnly, SameSite=Strict cookie
// naming a server-side record) keeps that token in memory, and every page
// is built from the REST API's own handlers called in-process with it as
// the bearer token. The API's authentication, roles and validation therefore
// apply to the console exactly as to curl: a read-role session is refused
// every write by the API itself, and the API's field errors are shown next
// to the form field they name.
package console

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets/*.js assets/*.css
var assetFS embed.FS

// Prefix is where the console is served.
const Prefix = "/console"

const (
	cookieName      = "keymeter_console"
	loginCookieName = "keymeter_console_login"
	maxSessions     = 10000
)

// Config wires the console to the API.
type Config struct {
	// API is the REST API's handler; the console calls it in-process.
	API http.Handler
	// Role names the role of an admin token secret: "admin", "read", or ""
	// when the token is unknown.
	Role func(token string) string
	// IdleTimeout ends a session this long after its last request
	// (default 30 minutes).
	IdleTimeout time.Duration
	// MaxAge ends a session this long after sign-in (default 12 hours).
	MaxAge time.Duration
	// Sources are what the console reads beyond the API (optional).
	Sources Sources
}

// Console is the console's http.Handler.
type Console struct {
	cfg   Config
	log   *slog.Logger
	mux   *http.ServeMux
	pages map[string]*template.Template

	mu       sync.Mutex
	sessions map[string]*session

	backtests chan struct{} // one backtest at a time
	live      *liveHub
	charts    projectChartCache
}

type session struct {
	id       string
	token    string // the admin token, in memory only, sent to the API as bearer
	role     string
	csrf     string
	created  time.Time
	lastSeen time.Time
}

// Option configures New.
type Option func(*Console) error

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *Console) error {
		if l == nil {
			return errors.New("console: WithLogger(nil)")
		}
		c.log = l
		return nil
	}
}

// New builds the console.
func New(cfg Config, opts ...Option) (*Console, error) {
	if cfg.API == nil || cfg.Role == nil {
		return nil, errors.New("console: API and Role are required")
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Minute
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = 12 * time.Hour
	}
	c := &Console{cfg: cfg, log: slog.Default(), mux: http.NewServeMux(), sessions: map[string]*session{},
		backtests: make(chan struct{}, 1)}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	c.log = c.log.With("role", "console")
	c.live = newLiveHub(c)
	if err := c.parseTemplates(); err != nil {
		return nil, err
	}
	c.routes()
	return c, nil
}

// ServeHTTP serves the console with its security headers.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	c.mux.ServeHTTP(w, r)
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func secure(r *http.Request) bool { return r.TLS != nil }

func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: Prefix, HttpOnly: true, Secure: secure(r),
		SameSite: http.SameSiteStrictMode, MaxAge: maxAge})
}

// newSession signs a token in; it returns nil when the token is unknown.
func (c *Console) newSession(token string) *session {
	role := c.cfg.Role(token)
	if role != "admin" && role != "read" {
		return nil
	}
	now := time.Now()
	s := &session{id: randomToken(), token: token, role: role, csrf: randomToken(), created: now, lastSeen: now}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, o := range c.sessions {
		if c.expired(o, now) {
			delete(c.sessions, id)
		}
	}
	if len(c.sessions) >= maxSessions {
		// Drop the oldest idle session rather than grow without bound.
		var oldest *session
		for _, o := range c.sessions {
			if oldest == nil || o.lastSeen.Before(oldest.lastSeen) {
				oldest = o
			}
		}
		delete(c.sessions, oldest.id)
	}
	c.sessions[s.id] = s
	return s
}

func (c *Console) expired(s *session, now time.Time) bool {
	return now.Sub(s.lastSeen) > c.cfg.IdleTimeout || now.Sub(s.created) > c.cfg.MaxAge
}

// sessionOf returns the request's live session and touches it (unless it
// is a page's own periodic refresh, ?live=1, which must not keep an
// unattended session alive); expired says a session cookie named one that
// has timed out.
func (c *Console) sessionOf(r *http.Request) (s *session, expired bool) {
	ck, err := r.Cookie(cookieName)
	if err != nil || ck.Value == "" {
		return nil, false
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	s = c.sessions[ck.Value]
	if s == nil {
		return nil, true
	}
	if c.expired(s, now) {
		delete(c.sessions, s.id)
		return nil, true
	}
	if r.URL.Query().Get("live") == "" {
		s.lastSeen = now
	}
	return s, false
}

func (c *Console) endSession(s *session) {
	c.mu.Lock()
	delete(c.sessions, s.id)
	c.mu.Unlock()
}

// csrfOK checks a write's CSRF token (form field csrf or header
// X-CSRF-Token) against the session's, and the Origin when one is sent.
func csrfOK(r *http.Request, s *session) bool {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) == 1
}

// apiError is the API's error answer.
type apiError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

func (e *apiError) Error() string { return e.Message }

// recorder is a minimal in-memory http.ResponseWriter.
type recorder struct {
	status int
	header http.Header
	body   bytes.Buffer
}

func (w *recorder) Header() http.Header { return w.header }
func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	return w.body.Write(b)
}
func (w *recorder) WriteHeader(s int) {
	if w.status == 0 {
		w.status = s
	}
}

// raw calls the API in-process as the session's token and returns the
// recorded answer.
func (c *Console) raw(ctx context.Context, s *session, method, path string, q url.Values, body any) (*recorder, error) {
	var rd io.Reader = http.NoBody
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.RemoteAddr = "console"
	req.Header.Set("Authorization", "Bearer "+s.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := &recorder{header: http.Header{}}
	c.cfg.API.ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = 200
	}
	return rec, nil
}

// call calls the API and decodes its JSON answer into out; an API error is
// an *apiError.
func (c *Console) call(ctx context.Context, s *session, method, path string, q url.Values, body, out any) error {
	rec, err := c.raw(ctx, s, method, path, q, body)
	if err != nil {
		return err
	}
	if rec.status >= 400 {
		var e struct {
			Error apiError `json:"error"`
		}
		if json.Unmarshal(rec.body.Bytes(), &e) != nil || e.Error.Message == "" {
			e.Error = apiError{Code: "error", Message: fmt.Sprintf("the API answered %d", rec.status)}
		}
		e.Error.Status = rec.status
		return &e.Error
	}
	if out == nil || rec.body.Len() == 0 {
		return nil
	}
	if err := json.Unmarshal(rec.body.Bytes(), out); err != nil {
		return fmt.Errorf("console: decoding the API's answer to %s %s: %w", method, path, err)
	}
	return nil
}

func constEq(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
