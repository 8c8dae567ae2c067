// Package api is keymeter's REST API: keys, usage, logs, billing, rules,
// decisions and leak reports, described in schemas/openapi.yaml and served
// at /openapi.yaml. Callers authenticate with bearer admin tokens, stored
// only as SHA-256 hashes, each with a role: admin (read and write) or read.
package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/console"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/schemas"
)

// Role of an admin token.
type Role int

const (
	RoleNone Role = iota
	RoleRead
	RoleAdmin
)

func (r Role) String() string {
	switch r {
	case RoleRead:
		return "read"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// Token is an admin token as configured: the hash of the secret and a role.
type Token struct {
	Hash [32]byte
	Role Role
}

// ParseToken parses "admin:<sha256 hex>" or "read:<sha256 hex>".
func ParseToken(s string) (Token, error) {
	role, hexHash, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		// Never echo the value: it may be a raw token pasted by mistake.
		return Token{}, errors.New("admin token: want role:sha256hex (role admin or read), the SHA-256 of the token, never the token itself")
	}
	var t Token
	switch role {
	case "admin":
		t.Role = RoleAdmin
	case "read":
		t.Role = RoleRead
	default:
		return Token{}, fmt.Errorf("admin token role %q: accepted values are admin, read", role)
	}
	b, err := hex.DecodeString(hexHash)
	if err != nil || len(b) != 32 {
		return Token{}, fmt.Errorf("admin token hash for role %s: want 64 hex characters of SHA-256", role)
	}
	copy(t.Hash[:], b)
	return t, nil
}

// HashToken is the configured form of a token secret.
func HashToken(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// KeyService is the key lifecycle (keys.Service).
type KeyService interface {
	Create(ctx context.Context, p keys.CreateParams) (keys.Created, error)
	Rotate(ctx context.Context, id string, grace time.Duration) (keys.Created, error)
	Revoke(ctx context.Context, id, reason string) error
	Suspend(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error
	Update(ctx context.Context, id string, p keys.UpdateParams) error
	Delete(ctx context.Context, id string) error
}

// Config wires the API to the rest of keymeter. Nil parts answer 503.
type Config struct {
	Tokens   []Token
	Keys     KeyService
	KeyTable *keys.Table // reads of key state
	Usage    store.UsageReader
	Logs     store.LogReader
	Decision store.DecisionStore
	Billing  Billing
	Rules    RuleLister
	// RuleModes handles PUT /v1/rules/{id}/mode; nil answers 503.
	RuleModes RuleModes
	// Leaks handles POST /v1/leaks (signed secret-scanner reports) and
	// POST /v1/leaks/hash (an operator's report by SHA-256).
	Leaks LeakHandler
	// Audit keeps the audit trail of changes (GET /v1/audit); nil: changes
	// are not recorded and GET /v1/audit answers 503.
	Audit store.AuditLog
	// Events accepts JSON usage events from third parties (POST /v1/events).
	Events EventSink
	// Retention, if set, is the store's raw-event retention in days:
	// POST /v1/events drops (and lists) events older than that.
	Retention func(ctx context.Context) (int, error)
	// Console is what the web console reads beyond the API: stored events
	// for backtests and key profiles, the bus for the live overview.
	Console console.Sources
	// Ready reports readiness for /readyz.
	Ready func() bool
}

// Server is the API's http.Handler.
type Server struct {
	cfg Config
	mux *http.ServeMux
	log *slog.Logger

	retMu   sync.Mutex
	retDays int
	retAt   time.Time
}

// Option configures New.
type Option func(*Server) error

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(s *Server) error {
		if l == nil {
			return errors.New("api: WithLogger(nil)")
		}
		s.log = l
		return nil
	}
}

// New builds the API server.
func New(cfg Config, opts ...Option) (*Server, error) {
	if len(cfg.Tokens) == 0 {
		return nil, errors.New("api: at least one admin token hash is required (--admin-token role:sha256hex)")
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), log: slog.Default()}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	s.log = s.log.With("role", "api")
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	m.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.cfg.Ready != nil && !s.cfg.Ready() {
			writeError(w, &Error{Status: 503, Code: "not_ready", Message: "key table not loaded yet"})
			return
		}
		writeJSON(w, 200, map[string]string{"status": "ready"})
	})
	m.HandleFunc("GET /openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(schemas.OpenAPI)
	})

	read, admin := s.auth(RoleRead), s.auth(RoleAdmin)
	m.Handle("GET /v1/keys", read(s.listKeys))
	m.Handle("POST /v1/keys", admin(s.createKey))
	m.Handle("GET /v1/keys/{id}", read(s.getKey))
	m.Handle("PATCH /v1/keys/{id}", admin(s.updateKey))
	m.Handle("DELETE /v1/keys/{id}", admin(s.deleteKey))
	m.Handle("POST /v1/keys/{id}/rotate", admin(s.rotateKey))
	m.Handle("POST /v1/keys/{id}/revoke", admin(s.revokeKey))
	m.Handle("POST /v1/keys/{id}/suspend", admin(s.suspendKey))
	m.Handle("POST /v1/keys/{id}/resume", admin(s.resumeKey))
	m.Handle("GET /v1/usage", read(s.usage))
	m.Handle("GET /v1/logs", read(s.logs))
	m.Handle("GET /v1/decisions", read(s.decisions))
	m.Handle("GET /v1/billing/{period}", read(s.billing))
	m.Handle("POST /v1/billing/{period}/close", admin(s.closeBilling))
	m.Handle("GET /v1/rules", read(s.rules))
	m.Handle("PUT /v1/rules/{id}/mode", admin(s.setRuleMode))
	m.Handle("GET /v1/audit", read(s.audit))
	m.Handle("POST /v1/events", admin(s.events))
	m.Handle("POST /v1/leaks", http.HandlerFunc(s.leaks)) // authenticated by its own signature
	m.Handle("POST /v1/leaks/hash", admin(s.leakHash))
	s.mountConsole()
	m.HandleFunc("/", s.noRoute)
}

// methods the API may serve; HEAD and OPTIONS are not among them.
var methods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// noRoute answers a request no pattern took: 405 with Allow when the path
// exists under other methods, 404 otherwise.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range methods {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, &Error{Status: http.StatusMethodNotAllowed, Code: "method_not_allowed",
			Message: fmt.Sprintf("%s is not served on %s; allowed: %s", r.Method, r.URL.Path, strings.Join(allow, ", "))})
		return
	}
	writeError(w, &Error{Status: 404, Code: "not_found", Message: fmt.Sprintf("no route %s %s (see /openapi.yaml)", r.Method, r.URL.Path)})
}

// ServeHTTP serves the API; every response is JSON, every panic a 500.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("api: panic", "path", r.URL.Path, "panic", v)
			writeError(w, &Error{Status: 500, Code: "internal", Message: "internal error"})
		}
	}()
	if r.Method == http.MethodHead {
		// Go's mux serves HEAD with GET handlers; the API declares no HEAD.
		s.noRoute(w, r)
		return
	}
	s.mux.ServeHTTP(w, r)
}

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// auth checks the bearer token against the configured hashes and role.
func (s *Server) auth(need Role) func(handlerFunc) http.Handler {
	return func(h handlerFunc) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c := s.tokenOf(r)
			role := c.role
			switch {
			case role == RoleNone:
				w.Header().Set("WWW-Authenticate", `Bearer realm="keymeter"`)
				writeError(w, &Error{Status: 401, Code: "unauthenticated", Message: "missing or unknown admin token (Authorization: Bearer <token>)"})
				return
			case role < need:
				writeError(w, &Error{Status: 403, Code: "permission_denied", Message: fmt.Sprintf("this token has role %s; %s needs role %s", role, r.URL.Path, need)})
				return
			}
			r = r.WithContext(withCaller(r.Context(), c))
			if err := h(w, r); err != nil {
				s.fail(w, r, err)
			}
		})
	}
}

func (s *Server) roleOf(r *http.Request) Role { return s.tokenOf(r).role }

// Error is an API error: the status, a stable code, a message for people,
// and the offending field when there is one.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

func (e *Error) Error() string { return e.Message }

func badRequest(field, format string, args ...any) *Error {
	return &Error{Status: 400, Code: "invalid_argument", Field: field, Message: fmt.Sprintf(format, args...)}
}

// fail maps every kind of error to its status in one place.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *Error
	var fe *store.FilterError
	var re *keys.RotatedError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &re):
		ae = &Error{Status: 409, Code: "already_rotated", Message: re.Error()}
	case errors.As(err, &fe):
		ae = &Error{Status: 400, Code: "invalid_argument", Field: fe.Field, Message: fe.Error()}
	case errors.Is(err, store.ErrInvalidQuery), errors.Is(err, keys.ErrInvalid):
		ae = &Error{Status: 400, Code: "invalid_argument", Message: err.Error()}
	case errors.Is(err, keys.ErrNotFound), errors.Is(err, store.ErrNotFound):
		ae = &Error{Status: 404, Code: "not_found", Message: err.Error()}
	case errors.Is(err, keys.ErrConflict):
		ae = &Error{Status: 409, Code: "conflict", Message: err.Error()}
	case errors.Is(err, keys.ErrNotVisible):
		// The change is on the key-state log; this server has not seen it
		// come back yet. Verifiers apply it all the same.
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "accepted", "message": err.Error()})
		return
	case errors.Is(err, context.DeadlineExceeded):
		ae = &Error{Status: 504, Code: "timeout", Message: "the request took too long"}
	default:
		s.log.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = &Error{Status: 500, Code: "internal", Message: "internal error"}
	}
	writeError(w, ae)
}

func writeError(w http.ResponseWriter, e *Error) {
	writeJSON(w, e.Status, map[string]*Error{"error": e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func unavailable(what string) error {
	return &Error{Status: 503, Code: "unavailable", Message: what + " is not configured on this server"}
}
