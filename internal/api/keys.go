package api

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
)

// KeyJSON is a key as the API shows it: never the secret or its hash.
type KeyJSON struct {
	ID            string            `json:"id"`
	Project       string            `json:"project"`
	Name          string            `json:"name,omitempty"`
	Owner         string            `json:"owner,omitempty"`
	Env           string            `json:"env"`
	DisplayPrefix string            `json:"display_prefix"`
	Status        string            `json:"status"`
	CreatedAt     *time.Time        `json:"created_at,omitempty"`
	ExpiresAt     *time.Time        `json:"expires_at,omitempty"`
	RevokedAt     *time.Time        `json:"revoked_at,omitempty"`
	RevokeReason  string            `json:"revoke_reason,omitempty"`
	Scopes        []string          `json:"scopes,omitempty"`
	AllowedCIDRs  []string          `json:"allowed_cidrs,omitempty"`
	RateLimitPerS float64           `json:"rate_limit_per_s,omitempty"`
	RateBurst     uint32            `json:"rate_limit_burst,omitempty"`
	MonthlyQuota  uint64            `json:"monthly_quota,omitempty"`
	QuotaState    string            `json:"quota_state,omitempty"`
	QuotaUsed     uint64            `json:"quota_used,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	Replaces      string            `json:"replaces,omitempty"`
	GraceUntil    *time.Time        `json:"grace_until,omitempty"`
	ThrottlePerS  float64           `json:"throttle_per_s,omitempty"`
	ThrottleUntil *time.Time        `json:"throttle_until,omitempty"`
	Version       uint64            `json:"version"`
}

// CreatedJSON is a new key with its secret, shown this once.
type CreatedJSON struct {
	Secret string  `json:"secret"`
	Key    KeyJSON `json:"key"`
}

func ts(ns int64) *time.Time {
	if ns == 0 {
		return nil
	}
	t := time.Unix(0, ns).UTC()
	return &t
}

func enumName(s, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(s, prefix))
}

// KeyFromState converts a key state to its API form.
func KeyFromState(st *keymeterv1.KeyState) KeyJSON {
	k := KeyJSON{
		ID: st.GetId(), Project: st.GetProject(), Name: st.GetName(), Owner: st.GetOwner(), Env: st.GetEnv(),
		DisplayPrefix: st.GetDisplayPrefix(), Status: enumName(st.GetStatus().String(), "KEY_STATUS_"),
		CreatedAt: ts(st.GetCreatedUnixNano()), ExpiresAt: ts(st.GetExpiresUnixNano()), RevokedAt: ts(st.GetRevokedUnixNano()),
		RevokeReason: st.GetRevokeReason(), Scopes: st.GetScopes(), AllowedCIDRs: st.GetAllowedCidrs(),
		RateLimitPerS: st.GetRateLimitPerS(), RateBurst: st.GetRateLimitBurst(), MonthlyQuota: st.GetMonthlyQuota(),
		QuotaUsed: st.GetQuotaUsed(), Metadata: st.GetMetadata(), Replaces: st.GetReplaces(),
		GraceUntil: ts(st.GetGraceUntilUnixNano()), ThrottlePerS: st.GetThrottlePerS(), ThrottleUntil: ts(st.GetThrottleUntilUnixNano()),
		Version: st.GetVersion(),
	}
	if st.GetQuotaState() != keymeterv1.QuotaState_QUOTA_STATE_UNSPECIFIED {
		k.QuotaState = enumName(st.GetQuotaState().String(), "QUOTA_STATE_")
	}
	return k
}

// KeyLimitsJSON are the limits accepted at creation.
type KeyLimitsJSON struct {
	Scopes        []string   `json:"scopes,omitempty"`
	AllowedCIDRs  []string   `json:"allowed_cidrs,omitempty"`
	RateLimitPerS float64    `json:"rate_limit_per_s,omitempty"`
	RateBurst     uint32     `json:"rate_limit_burst,omitempty"`
	MonthlyQuota  uint64     `json:"monthly_quota,omitempty"`
	ExpiresAt     *time.Time `json:"expires_at,omitempty"`
}

// CreateKeyRequest is the body of POST /v1/keys.
type CreateKeyRequest struct {
	Project  string            `json:"project"`
	Name     string            `json:"name,omitempty"`
	Owner    string            `json:"owner,omitempty"`
	Env      string            `json:"env,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	KeyLimitsJSON
}

func (s *Server) keyService() (KeyService, error) {
	if s.cfg.Keys == nil {
		return nil, unavailable("key management")
	}
	return s.cfg.Keys, nil
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	var req CreateKeyRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.Project == "" {
		return badRequest("project", "project is required")
	}
	p := keys.CreateParams{Project: req.Project, Name: req.Name, Owner: req.Owner, Env: req.Env, Metadata: req.Metadata,
		KeyLimits: keys.KeyLimits{Scopes: req.Scopes, AllowedCIDRs: req.AllowedCIDRs, RatePerS: req.RateLimitPerS,
			Burst: req.RateBurst, MonthlyQuota: req.MonthlyQuota}}
	if req.ExpiresAt != nil {
		p.ExpiresAt = *req.ExpiresAt
	}
	c, err := ks.Create(r.Context(), p)
	return writeCreated(w, c, err)
}

func (s *Server) getKey(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.KeyTable == nil {
		return unavailable("key table")
	}
	st, ok := s.cfg.KeyTable.State(r.PathValue("id"))
	if !ok {
		return &Error{Status: 404, Code: "not_found", Message: "no key " + r.PathValue("id")}
	}
	writeJSON(w, 200, KeyFromState(st))
	return nil
}

// KeyList is a page of keys.
type KeyList struct {
	Keys []KeyJSON `json:"keys"`
	Next string    `json:"next,omitempty"`
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.KeyTable == nil {
		return unavailable("key table")
	}
	q := r.URL.Query()
	for f := range q {
		switch f {
		case "project", "status", "limit", "cursor":
		default:
			return badRequest(f, "unknown query parameter %q (accepted: project, status, limit, cursor)", f)
		}
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return badRequest("limit", "limit %q: want an integer 1-1000", v)
		}
		limit = n
	}
	after := ""
	if c := q.Get("cursor"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil {
			return badRequest("cursor", "cursor is not one this server issued")
		}
		after = string(b)
	}
	project, status := q.Get("project"), q.Get("status")
	switch status {
	case "", "active", "suspended", "revoked", "deleted":
	default:
		return badRequest("status", "status %q: accepted values are active, suspended, revoked, deleted", status)
	}
	states := s.cfg.KeyTable.States(func(st *keymeterv1.KeyState) bool {
		return (project == "" || st.GetProject() == project) &&
			(status == "" || enumName(st.GetStatus().String(), "KEY_STATUS_") == status) &&
			st.GetId() > after
	})
	out := KeyList{Keys: []KeyJSON{}}
	for i, st := range states {
		if i == limit {
			out.Next = base64.RawURLEncoding.EncodeToString([]byte(states[i-1].GetId()))
			break
		}
		out.Keys = append(out.Keys, KeyFromState(st))
	}
	writeJSON(w, 200, out)
	return nil
}

// UpdateKeyRequest is the body of PATCH /v1/keys/{id}; absent fields stay.
type UpdateKeyRequest struct {
	Name          *string           `json:"name,omitempty"`
	Scopes        *[]string         `json:"scopes,omitempty"`
	AllowedCIDRs  *[]string         `json:"allowed_cidrs,omitempty"`
	RateLimitPerS *float64          `json:"rate_limit_per_s,omitempty"`
	RateBurst     *uint32           `json:"rate_limit_burst,omitempty"`
	MonthlyQuota  *uint64           `json:"monthly_quota,omitempty"`
	ExpiresAt     *time.Time        `json:"expires_at,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	ThrottlePerS  *float64          `json:"throttle_per_s,omitempty"`
	ThrottleUntil *time.Time        `json:"throttle_until,omitempty"`
}

func (s *Server) updateKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	var req UpdateKeyRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	id := r.PathValue("id")
	err = ks.Update(r.Context(), id, keys.UpdateParams{Name: req.Name, Scopes: req.Scopes, AllowedCIDRs: req.AllowedCIDRs,
		RatePerS: req.RateLimitPerS, Burst: req.RateBurst, MonthlyQuota: req.MonthlyQuota, ExpiresAt: req.ExpiresAt,
		Metadata: req.Metadata, ThrottlePerS: req.ThrottlePerS, ThrottleUntil: req.ThrottleUntil})
	if err != nil {
		return err
	}
	return s.getKey(w, r)
}

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	if err := ks.Delete(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// RotateRequest is the body of POST /v1/keys/{id}/rotate.
type RotateRequest struct {
	// GracePeriod is how long the old key keeps verifying, e.g. "24h".
	GracePeriod string `json:"grace_period,omitempty"`
}

func (s *Server) rotateKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	var req RotateRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	var grace time.Duration
	if req.GracePeriod != "" {
		if grace, err = time.ParseDuration(req.GracePeriod); err != nil || grace < 0 {
			return badRequest("grace_period", "grace_period %q: want a duration such as 24h or 30m", req.GracePeriod)
		}
	}
	c, err := ks.Rotate(r.Context(), r.PathValue("id"), grace)
	return writeCreated(w, c, err)
}

// RevokeRequest is the body of POST /v1/keys/{id}/revoke.
type RevokeRequest struct {
	Reason string `json:"reason"`
}

func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	var req RevokeRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	if req.Reason == "" {
		req.Reason = "revoked by admin"
	}
	if err := ks.Revoke(r.Context(), r.PathValue("id"), req.Reason); err != nil {
		return err
	}
	return s.getKey(w, r)
}

func (s *Server) suspendKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	if err := ks.Suspend(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	return s.getKey(w, r)
}

func (s *Server) resumeKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	if err := ks.Resume(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	return s.getKey(w, r)
}

// writeCreated answers a create or rotate. When the key was written to the
// key-state log but this server's table has not shown it yet, the secret
// must still be shown (it exists nowhere else): 202 Accepted.
func writeCreated(w http.ResponseWriter, c keys.Created, err error) error {
	if err != nil && !(errors.Is(err, keys.ErrNotVisible) && c.State != nil) {
		return err
	}
	status := http.StatusCreated
	if err != nil {
		status = http.StatusAccepted
	}
	writeJSON(w, status, CreatedJSON{Secret: c.Secret.Reveal(), Key: KeyFromState(c.State)})
	return nil
}
