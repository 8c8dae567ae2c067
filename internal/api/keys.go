package api

import (
	"encoding/hex"
	"errors"
	"net/http"
	"regexp"
	"slices"
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
	Kind          string            `json:"kind"`
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
	// ReplacedBy and GraceUntil are set on a rotated-out key: it verifies
	// until GraceUntil; Retired once that has passed.
	ReplacedBy string     `json:"replaced_by,omitempty"`
	GraceUntil *time.Time `json:"grace_until,omitempty"`
	Retired    bool       `json:"retired,omitempty"`
	// SuspensionID says who suspended the key: "manual:..." a person,
	// "decision:<id>" detection, until SuspendedUntil.
	SuspensionID   string     `json:"suspension_id,omitempty"`
	SuspendedUntil *time.Time `json:"suspended_until,omitempty"`
	ThrottlePerS   float64    `json:"throttle_per_s,omitempty"`
	ThrottleUntil  *time.Time `json:"throttle_until,omitempty"`
	Version        uint64     `json:"version"`
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
		Kind:          keys.KindOf(st.GetKind()),
		DisplayPrefix: st.GetDisplayPrefix(), Status: enumName(st.GetStatus().String(), "KEY_STATUS_"),
		CreatedAt: ts(st.GetCreatedUnixNano()), ExpiresAt: ts(st.GetExpiresUnixNano()), RevokedAt: ts(st.GetRevokedUnixNano()),
		RevokeReason: st.GetRevokeReason(), Scopes: st.GetScopes(), AllowedCIDRs: st.GetAllowedCidrs(),
		RateLimitPerS: st.GetRateLimitPerS(), RateBurst: st.GetRateLimitBurst(), MonthlyQuota: st.GetMonthlyQuota(),
		QuotaUsed: st.GetQuotaUsed(), Metadata: st.GetMetadata(), Replaces: st.GetReplaces(),
		GraceUntil: ts(st.GetGraceUntilUnixNano()), ThrottlePerS: st.GetThrottlePerS(), ThrottleUntil: ts(st.GetThrottleUntilUnixNano()),
		Version: st.GetVersion(),
	}
	k.ReplacedBy = st.GetReplacedBy()
	k.Retired = st.GetGraceUntilUnixNano() != 0 && time.Now().UnixNano() >= st.GetGraceUntilUnixNano()
	if st.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED {
		k.SuspensionID, k.SuspendedUntil = st.GetSuspensionId(), ts(st.GetSuspendedUntilUnixNano())
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
	RateLimitPerS *float64   `json:"rate_limit_per_s,omitempty"`
	RateBurst     uint32     `json:"rate_limit_burst,omitempty"`
	MonthlyQuota  uint64     `json:"monthly_quota,omitempty"`
	ExpiresAt     *time.Time `json:"expires_at,omitempty"`
}

// CreateKeyRequest is the body of POST /v1/keys.
type CreateKeyRequest struct {
	Project  string            `json:"project"`
	Name     string            `json:"name,omitempty"`
	Owner    string            `json:"owner,omitempty"`
	Env      *string           `json:"env,omitempty"`
	Kind     *string           `json:"kind,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	KeyLimitsJSON
}

// validate checks a creation request, naming fields as the API does.
func (req *CreateKeyRequest) validate() error {
	if req.Project == "" {
		return badRequest("project", "project is required")
	}
	if err := checkLen("project", req.Project, 1, maxProjectLen); err != nil {
		return err
	}
	if err := checkLen("name", req.Name, 0, maxNameLen); err != nil {
		return err
	}
	if err := checkLen("owner", req.Owner, 0, maxNameLen); err != nil {
		return err
	}
	if req.Env != nil && *req.Env != "live" && *req.Env != "test" {
		return badRequest("env", "env %q: accepted values are live, test", *req.Env)
	}
	if req.Kind != nil {
		if _, err := keys.ParseKind(*req.Kind); err != nil || *req.Kind == "" {
			return badRequest("kind", "kind %q: accepted values are %s", *req.Kind, strings.Join(keys.Kinds, ", "))
		}
	}
	if err := checkMetadata("metadata", req.Metadata); err != nil {
		return err
	}
	if err := checkScopes("scopes", req.Scopes); err != nil {
		return err
	}
	if err := checkCIDRs("allowed_cidrs", req.AllowedCIDRs); err != nil {
		return err
	}
	if err := checkRate("rate_limit_per_s", req.RateLimitPerS); err != nil {
		return err
	}
	return checkKeyTime("expires_at", req.ExpiresAt)
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
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	p := keys.CreateParams{Project: req.Project, Name: req.Name, Owner: req.Owner, Metadata: req.Metadata,
		KeyLimits: keys.KeyLimits{Scopes: req.Scopes, AllowedCIDRs: req.AllowedCIDRs,
			Burst: req.RateBurst, MonthlyQuota: req.MonthlyQuota}}
	if req.Env != nil {
		p.Env = *req.Env
	}
	if req.Kind != nil {
		p.Kind = *req.Kind
	}
	if req.RateLimitPerS != nil {
		p.RatePerS = *req.RateLimitPerS
	}
	if req.ExpiresAt != nil {
		p.ExpiresAt = *req.ExpiresAt
	}
	c, err := ks.Create(r.Context(), p)
	return writeCreated(w, c, s.audited(r, "key.create", c.State.GetId(), req, err))
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
	q, err := queryParams(r, "project", "status", "limit", "cursor")
	if err != nil {
		return err
	}
	limit, err := intParam(q, "limit", 1, 1000, 100)
	if err != nil {
		return err
	}
	if err := checkLen("project", q.Get("project"), 0, maxProjectLen); err != nil {
		return err
	}
	after := ""
	if c := q.Get("cursor"); c != "" {
		// The cursor is the hex of the last id of the previous page.
		b, err := hex.DecodeString(c)
		if err != nil || strings.ToLower(c) != c {
			return badRequest("cursor", "cursor %q is not one this server issued (the next of a previous page)", c)
		}
		after = string(b)
	}
	project, status := q.Get("project"), q.Get("status")
	switch status {
	case "", "active", "suspended", "revoked", "deleted":
	default:
		return badRequest("status", "status %q: accepted values are active, suspended, revoked, deleted", status)
	}
	// Only the ids of the matching keys are gathered (keep answers false:
	// nothing is copied), then the page's keys are copied: a page costs a
	// pass over the table, not a copy of every key (at 20k keys the
	// console's overview read 20 pages in ~1 s).
	var ids []string
	s.cfg.KeyTable.States(func(st *keymeterv1.KeyState) bool {
		if (project == "" || st.GetProject() == project) &&
			(status == "" || enumName(st.GetStatus().String(), "KEY_STATUS_") == status) &&
			st.GetId() > after {
			ids = append(ids, st.GetId())
		}
		return false
	})
	slices.Sort(ids)
	out := KeyList{Keys: []KeyJSON{}}
	for i, id := range ids {
		if i == limit {
			out.Next = hex.EncodeToString([]byte(ids[i-1]))
			break
		}
		if st, ok := s.cfg.KeyTable.State(id); ok { // gone meanwhile: not listed
			out.Keys = append(out.Keys, KeyFromState(st))
		}
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
	Kind          *string           `json:"kind,omitempty"`
	ThrottlePerS  *float64          `json:"throttle_per_s,omitempty"`
	ThrottleUntil *time.Time        `json:"throttle_until,omitempty"`
}

func (req *UpdateKeyRequest) validate() error {
	if req.Name != nil {
		if err := checkLen("name", *req.Name, 0, maxNameLen); err != nil {
			return err
		}
	}
	if req.Kind != nil {
		if _, err := keys.ParseKind(*req.Kind); err != nil || *req.Kind == "" {
			return badRequest("kind", "kind %q: accepted values are %s", *req.Kind, strings.Join(keys.Kinds, ", "))
		}
	}
	if req.Scopes != nil {
		if err := checkScopes("scopes", *req.Scopes); err != nil {
			return err
		}
	}
	if req.AllowedCIDRs != nil {
		if err := checkCIDRs("allowed_cidrs", *req.AllowedCIDRs); err != nil {
			return err
		}
	}
	if err := checkMetadata("metadata", req.Metadata); err != nil {
		return err
	}
	if err := checkRate("rate_limit_per_s", req.RateLimitPerS); err != nil {
		return err
	}
	if err := checkRate("throttle_per_s", req.ThrottlePerS); err != nil {
		return err
	}
	if err := checkKeyTime("expires_at", req.ExpiresAt); err != nil {
		return err
	}
	if err := checkKeyTime("throttle_until", req.ThrottleUntil); err != nil {
		return err
	}
	if req.ThrottleUntil != nil && req.ThrottlePerS == nil {
		return badRequest("throttle_until", "throttle_until needs throttle_per_s")
	}
	return nil
}

func (s *Server) updateKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	var req UpdateKeyRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	id := r.PathValue("id")
	err = ks.Update(r.Context(), id, keys.UpdateParams{Name: req.Name, Scopes: req.Scopes, AllowedCIDRs: req.AllowedCIDRs,
		RatePerS: req.RateLimitPerS, Burst: req.RateBurst, MonthlyQuota: req.MonthlyQuota, ExpiresAt: req.ExpiresAt,
		Metadata: req.Metadata, Kind: req.Kind, ThrottlePerS: req.ThrottlePerS, ThrottleUntil: req.ThrottleUntil})
	if err := s.audited(r, "key.update", id, req, err); err != nil {
		return err
	}
	return s.getKey(w, r)
}

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	if err := s.audited(r, "key.delete", r.PathValue("id"), nil, ks.Delete(r.Context(), r.PathValue("id"))); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// RotateRequest is the body of POST /v1/keys/{id}/rotate.
type RotateRequest struct {
	// GracePeriod is how long the old key keeps verifying, e.g. "24h".
	GracePeriod *string `json:"grace_period,omitempty"`
}

// graceRe is the grammar of grace_period, as the spec states it.
var graceRe = regexp.MustCompile(`^([0-9]{1,4}(h|m|s|ms|us|ns))(([0-9]{1,4}(h|m|s|ms|us|ns))){0,3}$`)

func (s *Server) rotateKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	var req RotateRequest
	if err := decodeOptional(w, r, &req); err != nil {
		return err
	}
	var grace time.Duration
	if req.GracePeriod != nil {
		if grace, err = time.ParseDuration(*req.GracePeriod); err != nil || !graceRe.MatchString(*req.GracePeriod) {
			return badRequest("grace_period", "grace_period %q: want a duration such as 24h, 30m or 1h30m (up to 4 parts of up to 4 digits; units h, m, s, ms, us, ns)", *req.GracePeriod)
		}
	}
	c, err := ks.Rotate(r.Context(), r.PathValue("id"), grace)
	return writeCreated(w, c, s.audited(r, "key.rotate", r.PathValue("id"), map[string]any{"grace_period": req.GracePeriod, "new_key": c.State.GetId()}, err))
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
	if err := decodeOptional(w, r, &req); err != nil {
		return err
	}
	if err := checkLen("reason", req.Reason, 0, maxReasonLen); err != nil {
		return err
	}
	if req.Reason == "" {
		req.Reason = "revoked by admin"
	}
	if err := s.audited(r, "key.revoke", r.PathValue("id"), req, ks.Revoke(r.Context(), r.PathValue("id"), req.Reason)); err != nil {
		return err
	}
	return s.getKey(w, r)
}

func (s *Server) suspendKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	if err := s.audited(r, "key.suspend", r.PathValue("id"), nil, ks.Suspend(r.Context(), r.PathValue("id"))); err != nil {
		return err
	}
	return s.getKey(w, r)
}

func (s *Server) resumeKey(w http.ResponseWriter, r *http.Request) error {
	ks, err := s.keyService()
	if err != nil {
		return err
	}
	if err := s.audited(r, "key.resume", r.PathValue("id"), nil, ks.Resume(r.Context(), r.PathValue("id"))); err != nil {
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
	// The body holds the secret: no cache (browser, proxy) may keep it.
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, CreatedJSON{Secret: c.Secret.Reveal(), Key: KeyFromState(c.State)})
	return nil
}
