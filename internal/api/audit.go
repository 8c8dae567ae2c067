package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/store"
)

// Label is the token's name in the audit trail: its role and the first 8
// hex characters of its configured SHA-256, e.g. "admin:1f2e3d4c". It
// names the token without revealing it (the hash is in the configuration).
func (t Token) Label() string {
	return t.Role.String() + ":" + hex.EncodeToString(t.Hash[:4])
}

type actorKey struct{}

// caller is who made a request: the matched token's label and role.
type caller struct {
	label string
	role  Role
	kind  string // the role's name in the trail when not a token's (a leak reporter)
}

// tokenOf is the highest-role configured token the request's bearer
// token matches, RoleNone when none does.
func (s *Server) tokenOf(r *http.Request) caller {
	// RFC 9110 §11.1: the scheme is case-insensitive.
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	tok = strings.TrimLeft(tok, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return caller{}
	}
	h := sha256.Sum256([]byte(tok))
	var c caller
	for _, t := range s.cfg.Tokens {
		if subtle.ConstantTimeCompare(h[:], t.Hash[:]) == 1 && t.Role > c.role {
			c = caller{label: t.Label(), role: t.Role}
		}
	}
	return c
}

func withCaller(ctx context.Context, c caller) context.Context {
	return context.WithValue(ctx, actorKey{}, c)
}

// audited records a change made by the request's caller when err says it
// was made (nil, or written to the key-state log but not yet seen here),
// and returns err unchanged. detail is what was asked, marshalled to JSON;
// it must never hold a secret. A failure to record is logged: the change
// is made and the caller's answer stays true.
func (s *Server) audited(r *http.Request, action, target string, detail any, err error) error {
	if err != nil && !errors.Is(err, keys.ErrNotVisible) {
		return err
	}
	if s.cfg.Audit == nil {
		return err
	}
	c, _ := r.Context().Value(actorKey{}).(caller)
	now := time.Now().UTC()
	e := store.AuditEntry{ID: newAuditID(now), Time: now, Actor: c.label, Role: cmpOr(c.kind, c.role.String()),
		Action: action, Target: target}
	if s.cfg.KeyTable != nil && strings.HasPrefix(action, "key.") {
		if st, ok := s.cfg.KeyTable.State(target); ok {
			e.Project = st.GetProject()
		}
	}
	if detail != nil {
		if b, jerr := json.Marshal(detail); jerr == nil && string(b) != "{}" && string(b) != "null" {
			e.Detail = string(b)
		}
	}
	// Recorded even when the caller has gone: the change is made.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()
	if werr := s.cfg.Audit.WriteAudit(ctx, []store.AuditEntry{e}); werr != nil {
		s.log.Error("api: audit entry not recorded", "action", action, "target", target, "actor", c.label, "err", werr)
	}
	return err
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// leakReport serves a signed secret-scanner report (POST /v1/leaks) and
// records its verdicts in the audit trail, the reporter named by its
// public key identifier. Only a report the handler accepted is recorded.
func (s *Server) leakReport(w http.ResponseWriter, r *http.Request) {
	rec := &bufferedResponse{ResponseWriter: w}
	s.cfg.Leaks.ServeHTTP(rec, r)
	if rec.status == http.StatusOK {
		var labels []struct {
			TokenHash string `json:"token_hash"`
			Label     string `json:"label"`
			Duplicate bool   `json:"duplicate,omitempty"`
		}
		if json.Unmarshal(rec.body.Bytes(), &labels) == nil {
			for i := range labels {
				// A prefix names the report's token without the whole hash.
				labels[i].TokenHash = "sha256:" + labels[i].TokenHash[:min(12, len(labels[i].TokenHash))]
			}
			id := r.Header.Get("Github-Public-Key-Identifier")
			r = r.WithContext(withCaller(r.Context(), caller{label: "reporter:" + abbrev(id, 64), kind: "reporter"}))
			_ = s.audited(r, "leak.report", "", map[string]any{"labels": labels}, nil)
		}
	}
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	w.WriteHeader(rec.status)
	_, _ = w.Write(rec.body.Bytes())
}

func abbrev(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// bufferedResponse holds a response (status and body) until it is read;
// headers go straight to the underlying writer.
type bufferedResponse struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.body.Write(p)
}

// newAuditID begins with the time in nanoseconds, so that entries of one
// millisecond (the stored time's precision) still list in order.
func newAuditID(now time.Time) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%016x", now.UnixNano()) + hex.EncodeToString(b[:])
}

// AuditEntryJSON is one change in the audit trail.
type AuditEntryJSON struct {
	ID      string    `json:"id"`
	Time    time.Time `json:"time"`
	Actor   string    `json:"actor"`
	Role    string    `json:"role"`
	Action  string    `json:"action"`
	Target  string    `json:"target,omitempty"`
	Project string    `json:"project,omitempty"`
	Detail  any       `json:"detail,omitempty"`
}

// AuditList is the answer of GET /v1/audit, newest first.
type AuditList struct {
	Entries []AuditEntryJSON `json:"entries"`
	Next    string           `json:"next,omitempty"`
}

func (s *Server) audit(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Audit == nil {
		return unavailable("the audit trail")
	}
	v, err := queryParams(r, "actor", "action", "target", "from", "to", "limit", "cursor")
	if err != nil {
		return err
	}
	if err := checkFilters(v, "actor", "action", "target"); err != nil {
		return err
	}
	pg, err := parseListPage(v)
	if err != nil {
		return err
	}
	q := store.AuditQuery{Actor: v.Get("actor"), Action: v.Get("action"), Target: v.Get("target"),
		From: pg.From, To: pg.To, Limit: pg.fetch(), Cursor: pg.Cursor}
	var es []store.AuditEntry
	if !pg.emptyRange() {
		if es, err = s.cfg.Audit.Audit(r.Context(), q); err != nil {
			return err
		}
	}
	limit := pg.Limit
	out := AuditList{Entries: make([]AuditEntryJSON, 0, len(es))}
	if len(es) > limit {
		es = es[:limit]
		out.Next = store.AuditCursor(es[limit-1])
	}
	for _, e := range es {
		ej := AuditEntryJSON{ID: e.ID, Time: e.Time, Actor: e.Actor, Role: e.Role, Action: e.Action, Target: e.Target, Project: e.Project}
		if e.Detail != "" {
			ej.Detail = rawJSON(e.Detail)
		}
		out.Entries = append(out.Entries, ej)
	}
	writeJSON(w, 200, out)
	return nil
}
