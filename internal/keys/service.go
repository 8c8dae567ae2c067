package keys

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// Errors Service callers branch on.
var (
	ErrInvalid  = errors.New("keys: invalid request")
	ErrConflict = errors.New("keys: key is not in a state that allows this")
	// ErrNotVisible: the change was written to the key-state log, but this
	// process's watch did not show it back within WriteTimeout (the bus is
	// slow or recovering). The change stands; callers may answer "accepted".
	ErrNotVisible = errors.New("keys: change written but not yet visible")
)

// ServiceConfig configures a Service.
type ServiceConfig struct {
	KeyLog bus.KeyLog
	// Table must be watching KeyLog (Table.Run) with KeepState on. The
	// service reads current states from it and waits for its own writes to
	// show up there before returning.
	Table *Table
	// Now is the clock (tests); time.Now by default.
	Now func() time.Time
	// WriteTimeout bounds the wait for a write to come back through the
	// watch (default 10s).
	WriteTimeout time.Duration
}

// Validate reports every problem of the configuration; it changes nothing.
func (c *ServiceConfig) Validate() error {
	var errs []error
	if c.KeyLog == nil {
		errs = append(errs, errors.New("keys: service: KeyLog is required"))
	}
	if c.Table == nil || !c.Table.keepState {
		errs = append(errs, errors.New("keys: service: a Table with KeepState is required"))
	}
	return errors.Join(errs...)
}

// Service runs the key lifecycle: every operation writes a full KeyState to
// the key-state log, from where every verifier picks it up.
type Service struct {
	kl      bus.KeyLog
	table   *Table
	log     *slog.Logger
	now     func() time.Time
	timeout time.Duration
}

// NewService returns a Service.
func NewService(cfg ServiceConfig, opts ...Option) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o, err := applyOptions(opts)
	if err != nil {
		return nil, err
	}
	s := &Service{kl: cfg.KeyLog, table: cfg.Table, log: o.log, now: cfg.Now, timeout: cfg.WriteTimeout}
	if s.now == nil {
		s.now = time.Now
	}
	if s.timeout <= 0 {
		s.timeout = 10 * time.Second
	}
	return s, nil
}

// Accepted ranges of what a key is given. Times are stored as Unix
// nanoseconds (which hold 1678-2262); keymeter accepts years 1971 to 2261 as
// written, so that no offset takes a time to or past the epoch (0 means
// "never") or out of range. Rates are stored as the time one request costs.
const (
	MinYear = 1971
	MaxYear = 2261
	// MinRate and MaxRate bound a rate limit or throttle (requests per
	// second); 0 means none.
	MinRate = 0.001
	MaxRate = 1e6
)

// CheckTime refuses a time outside years MinYear-MaxYear, naming field.
func CheckTime(field string, t time.Time) error {
	if y := t.Year(); y < MinYear || y > MaxYear {
		return fmt.Errorf("%w: %s %s: accepted range is years %d to %d (%d-01-01T00:00:00Z to %d-12-31T23:59:59Z)",
			ErrInvalid, field, t.Format(time.RFC3339), MinYear, MaxYear, MinYear, MaxYear)
	}
	return nil
}

// CheckRate refuses a rate that is not 0 or within MinRate-MaxRate, naming field.
func CheckRate(field string, r float64) error {
	if r == 0 {
		return nil
	}
	if math.IsNaN(r) || math.IsInf(r, 0) || r < MinRate || r > MaxRate {
		return fmt.Errorf("%w: %s %v: accepted are 0 (none) or %g to %g requests per second", ErrInvalid, field, r, MinRate, MaxRate)
	}
	return nil
}

// Limits a key may be given at creation or changed later.
type KeyLimits struct {
	Scopes       []string
	AllowedCIDRs []string
	RatePerS     float64
	Burst        uint32
	MonthlyQuota uint64
	ExpiresAt    time.Time // zero: never
}

// CreateParams describe a new key.
type CreateParams struct {
	Project  string
	Name     string
	Owner    string
	Env      string // live (default) | test
	Kind     string // server (default) | browser | mobile | batch
	Metadata map[string]string
	KeyLimits
}

// Created is the result of Create and Rotate. Secret is shown once: it is
// stored nowhere.
type Created struct {
	Secret Secret
	State  *keymeterv1.KeyState
}

// Create issues a new key. With ErrNotVisible the key was created all the
// same, and the returned Created holds its secret.
func (s *Service) Create(ctx context.Context, p CreateParams) (Created, error) {
	if p.Project == "" {
		return Created{}, fmt.Errorf("%w: project is required", ErrInvalid)
	}
	if p.Env == "" {
		p.Env = "live"
	}
	env, err := ParseEnv(p.Env)
	if err != nil {
		return Created{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	kind, err := ParseKind(p.Kind)
	if err != nil {
		return Created{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := checkLimits(&p.KeyLimits); err != nil {
		return Created{}, err
	}
	st := &keymeterv1.KeyState{
		Project:  p.Project,
		Name:     p.Name,
		Owner:    p.Owner,
		Env:      env.String(),
		Kind:     kind,
		Status:   keymeterv1.KeyStatus_KEY_STATUS_ACTIVE,
		Metadata: maps.Clone(p.Metadata),
	}
	applyLimits(st, &p.KeyLimits)
	return s.issue(ctx, st, env)
}

func (s *Service) issue(ctx context.Context, st *keymeterv1.KeyState, env Env) (Created, error) {
	sec, err := Generate(env)
	if err != nil {
		return Created{}, err
	}
	id, err := NewID()
	if err != nil {
		return Created{}, err
	}
	h := sec.Hash()
	now := s.now().UnixNano()
	st.Id = id
	st.Hash = h[:]
	st.DisplayPrefix = sec.Display()
	st.CreatedUnixNano = now
	st.UpdatedUnixNano = now
	st.Version = 1
	// A new id: with compare-and-set, "must not exist yet" (revision 0).
	cas := s.kl.CompareAndSet()
	if err := s.write(ctx, st, cas, 0); err != nil {
		if errors.Is(err, ErrNotVisible) {
			// The key exists: its secret must still reach the caller, once.
			return Created{Secret: sec, State: st}, err
		}
		return Created{}, err
	}
	s.log.Info("key created", "key_id", id, "project", st.Project, "display", st.DisplayPrefix)
	return Created{Secret: sec, State: st}, nil
}

// RotatedError: the key was already rotated (Rotate refuses it: a second
// rotation would give a retired key a new grace period).
type RotatedError struct {
	ID, ReplacedBy string // ReplacedBy is empty for a key rotated before keymeter recorded it
}

func (e *RotatedError) Error() string {
	if e.ReplacedBy == "" {
		return fmt.Sprintf("key %s was already rotated; rotate its replacement instead", e.ID)
	}
	return fmt.Sprintf("key %s was already rotated: its replacement is %s; rotate that one instead", e.ID, e.ReplacedBy)
}

// Unwrap makes a RotatedError an ErrConflict.
func (e *RotatedError) Unwrap() error { return ErrConflict }

// rotated reports whether st was rotated out already.
func rotated(st *keymeterv1.KeyState) error {
	if st.GetReplacedBy() != "" || st.GetGraceUntilUnixNano() != 0 {
		return &RotatedError{ID: st.GetId(), ReplacedBy: st.GetReplacedBy()}
	}
	return nil
}

// Rotate issues a new key that replaces id. The old key keeps verifying
// for grace (0: it stops at once), then is refused as expired. The new key
// inherits everything that constrains the old one: its status (a
// suspended key's replacement is suspended too), kind, scopes, CIDRs,
// limits, quota, expiry and throttle. A key is rotated once: rotating it
// again is a *RotatedError (an ErrConflict), so that a retired key's grace
// is never extended.
func (s *Service) Rotate(ctx context.Context, id string, grace time.Duration) (Created, error) {
	old, err := s.current(id)
	if err != nil {
		return Created{}, err
	}
	if old.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_REVOKED {
		return Created{}, fmt.Errorf("%w: key %s is revoked", ErrConflict, id)
	}
	if err := rotated(old); err != nil {
		return Created{}, err
	}
	env, err := ParseEnv(old.GetEnv())
	if err != nil {
		env = EnvLive
	}
	nw := proto.CloneOf(old)
	nw.Replaces = id
	nw.GraceUntilUnixNano = 0
	nw.ReplacedBy = ""
	nw.RevokedUnixNano, nw.RevokeReason = 0, ""
	nw.QuotaUsed, nw.QuotaState, nw.QuotaPeriodStartUnixNano = 0, 0, 0
	if nw.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED {
		// The replacement's suspension is the person's who rotated: no
		// detection timer lifts it (the old key's is about the old key).
		if nw.SuspensionId, err = newSuspensionID("manual:"); err != nil {
			return Created{}, err
		}
		nw.SuspendedUntilUnixNano = 0
	}
	created, issueErr := s.issue(ctx, nw, env)
	if issueErr != nil && !errors.Is(issueErr, ErrNotVisible) {
		return Created{}, issueErr
	}
	newID := created.State.GetId()
	until := s.now().Add(grace).UnixNano()
	if grace <= 0 {
		until = s.now().UnixNano()
	}
	if err := s.modify(ctx, id, func(st *keymeterv1.KeyState) error {
		if err := rotated(st); err != nil {
			return err // a concurrent rotation won
		}
		if st.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_REVOKED {
			return fmt.Errorf("%w: key %s is revoked", ErrConflict, id)
		}
		st.GraceUntilUnixNano = until
		st.ReplacedBy = newID
		return nil
	}); err != nil {
		if errors.Is(err, ErrConflict) {
			// The old key was rotated or revoked meanwhile: the new key
			// replaces nothing; take it back (its secret goes to no one).
			if derr := s.kl.DeleteKey(context.WithoutCancel(ctx), newID); derr != nil {
				s.log.Warn("keys: cannot delete the new key of a refused rotation", "key_id", newID, "err", derr)
			}
			return Created{}, err
		}
		// The new key exists: hand its secret over with the error.
		return created, fmt.Errorf("keys: new key %s issued but old key %s not retired: %w", newID, id, err)
	}
	s.log.Info("key rotated", "key_id", id, "new_key_id", newID, "grace", grace)
	return created, issueErr
}

// Revoke refuses the key from now on, for reason.
func (s *Service) Revoke(ctx context.Context, id, reason string) error {
	var written *keymeterv1.KeyState // what modify writes (it sets the version after fn)
	err := s.modify(ctx, id, func(st *keymeterv1.KeyState) error {
		written = st
		if st.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_REVOKED {
			// Keep the first revocation's time and reason.
			return fmt.Errorf("%w: key %s is already revoked", ErrConflict, id)
		}
		st.Status = keymeterv1.KeyStatus_KEY_STATUS_REVOKED
		st.RevokedUnixNano = s.now().UnixNano()
		st.RevokeReason = reason
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotVisible) && !errors.Is(err, ErrConflict) {
		return err
	}
	// written is the revoked state written (also with ErrNotVisible), or
	// the one found already revoked (ErrConflict): a revocation whose
	// record was not written, or that predates revocation records, gets
	// it now.
	if rerr := s.writeRevocation(ctx, id, written); rerr != nil {
		return errors.Join(err, rerr)
	}
	if err == nil {
		s.log.Info("key revoked", "key_id", id, "reason", reason)
	}
	return err
}

// writeRevocation writes key id's revoked state st as its revocation
// record too (RevocationRecordID), where the key log has no compare-and-set: a
// writer that read the key before the revocation may write it back
// unrevoked afterwards, and that write would be the key's latest record,
// the one a verifier starting later loads. The revocation record is
// written by nothing else, so it stays.
func (s *Service) writeRevocation(ctx context.Context, id string, st *keymeterv1.KeyState) error {
	if s.kl.CompareAndSet() != nil {
		return nil // a stale copy cannot replace the revocation
	}
	if st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_REVOKED || st.GetId() != id {
		return nil
	}
	b, err := proto.Marshal(st)
	if err != nil {
		return fmt.Errorf("keys: encoding key %s: %w", id, err)
	}
	var werr error
	for attempt := range 3 {
		if werr = s.kl.PutKey(ctx, RevocationRecordID(id), b); werr == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
	}
	if werr != nil {
		return fmt.Errorf("keys: key %s revoked, but its revocation record not written (a concurrent stale write could undo the revocation for verifiers started later; revoke again): %w", id, werr)
	}
	return nil
}

// Suspend refuses the key until Resume: a person's suspension. It replaces
// any suspension in force, so that detection's timer (ResumeSuspension)
// never lifts it.
func (s *Service) Suspend(ctx context.Context, id string) error {
	sid, err := newSuspensionID("manual:")
	if err != nil {
		return err
	}
	return s.modify(ctx, id, func(st *keymeterv1.KeyState) error {
		if st.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_REVOKED {
			return fmt.Errorf("%w: key %s is revoked", ErrConflict, id)
		}
		st.Status = keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED
		st.SuspensionId, st.SuspendedUntilUnixNano = sid, 0
		return nil
	})
}

// ErrSuspended: the key is already suspended by a suspension SuspendUntil
// does not replace (a person's, or detection's lasting longer).
var ErrSuspended = errors.New("keys: key is already suspended")

// SuspendUntil is detection's suspension: the key is suspended under
// suspension id sid until until (zero: until a person resumes it), when
// the caller lifts it with ResumeSuspension. A suspension a person made, or one of detection's
// lasting at least as long, stays in force: then the error is
// ErrSuspended (the caller must not arm a timer).
func (s *Service) SuspendUntil(ctx context.Context, id, sid string, until time.Time) error {
	if sid == "" || strings.HasPrefix(sid, "manual:") {
		return fmt.Errorf("%w: suspension id %q", ErrInvalid, sid)
	}
	return s.modify(ctx, id, func(st *keymeterv1.KeyState) error {
		switch st.GetStatus() {
		case keymeterv1.KeyStatus_KEY_STATUS_REVOKED:
			return fmt.Errorf("%w: key %s is revoked", ErrConflict, id)
		case keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED:
			cur := st.GetSuspensionId()
			if cur == sid {
				return fmt.Errorf("%w: key %s by suspension %s", ErrSuspended, id, sid)
			}
			// A suspension without an id predates the record: a person's.
			if cur == "" || strings.HasPrefix(cur, "manual:") {
				return fmt.Errorf("%w: key %s was suspended by a person", ErrSuspended, id)
			}
			if old := st.GetSuspendedUntilUnixNano(); old == 0 || (!until.IsZero() && old >= until.UnixNano()) {
				return fmt.Errorf("%w: key %s by suspension %s, which lasts at least as long", ErrSuspended, id, cur)
			}
		}
		st.Status = keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED
		st.SuspensionId, st.SuspendedUntilUnixNano = sid, 0
		if !until.IsZero() {
			st.SuspendedUntilUnixNano = until.UnixNano()
		}
		return nil
	})
}

// ResumeSuspension lifts suspension sid, and only it: if the key is no
// longer suspended under sid (a person suspended it again, or a later
// detection took over, or it was resumed or revoked), it changes nothing
// and returns ErrConflict. The check and the write are one
// compare-and-set where the key log has it.
func (s *Service) ResumeSuspension(ctx context.Context, id, sid string) error {
	return s.modify(ctx, id, func(st *keymeterv1.KeyState) error {
		if st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED || st.GetSuspensionId() != sid {
			return fmt.Errorf("%w: key %s is not under suspension %s", ErrConflict, id, sid)
		}
		st.Status = keymeterv1.KeyStatus_KEY_STATUS_ACTIVE
		st.SuspensionId, st.SuspendedUntilUnixNano = "", 0
		return nil
	})
}

// Resume reactivates a suspended key, whoever suspended it. A revoked key
// stays revoked.
func (s *Service) Resume(ctx context.Context, id string) error {
	return s.modify(ctx, id, func(st *keymeterv1.KeyState) error {
		if st.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_REVOKED {
			return fmt.Errorf("%w: key %s is revoked; issue a new key", ErrConflict, id)
		}
		st.Status = keymeterv1.KeyStatus_KEY_STATUS_ACTIVE
		st.SuspensionId, st.SuspendedUntilUnixNano = "", 0
		return nil
	})
}

func newSuspensionID(prefix string) (string, error) {
	var b [9]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return prefix + hex.EncodeToString(b[:]), nil
}

// UpdateParams changes some of a key's attributes; nil fields stay.
type UpdateParams struct {
	Name         *string
	Scopes       *[]string
	AllowedCIDRs *[]string
	RatePerS     *float64
	Burst        *uint32
	MonthlyQuota *uint64
	ExpiresAt    *time.Time // zero time: never
	Metadata     map[string]string
	Kind         *string
	// Throttle sets a detector-style throttle until ThrottleUntil.
	ThrottlePerS  *float64
	ThrottleUntil *time.Time
}

// Update changes a key's limits, scopes, CIDRs or expiry.
func (s *Service) Update(ctx context.Context, id string, p UpdateParams) error {
	return s.modify(ctx, id, func(st *keymeterv1.KeyState) error {
		if p.Name != nil {
			st.Name = *p.Name
		}
		if p.Kind != nil {
			k, err := ParseKind(*p.Kind)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrInvalid, err)
			}
			st.Kind = k
		}
		l := KeyLimits{Scopes: st.Scopes, AllowedCIDRs: st.AllowedCidrs, RatePerS: st.RateLimitPerS,
			Burst: st.RateLimitBurst, MonthlyQuota: st.MonthlyQuota}
		if st.ExpiresUnixNano != 0 {
			l.ExpiresAt = time.Unix(0, st.ExpiresUnixNano).UTC()
		}
		if p.Scopes != nil {
			l.Scopes = *p.Scopes
		}
		if p.AllowedCIDRs != nil {
			l.AllowedCIDRs = *p.AllowedCIDRs
		}
		if p.RatePerS != nil {
			l.RatePerS = *p.RatePerS
		}
		if p.Burst != nil {
			l.Burst = *p.Burst
		}
		if p.MonthlyQuota != nil {
			l.MonthlyQuota = *p.MonthlyQuota
		}
		if p.ExpiresAt != nil {
			l.ExpiresAt = *p.ExpiresAt
		}
		if err := checkLimits(&l); err != nil {
			return err
		}
		applyLimits(st, &l)
		if p.Metadata != nil {
			st.Metadata = maps.Clone(p.Metadata)
		}
		if p.ThrottleUntil != nil && p.ThrottlePerS == nil {
			return fmt.Errorf("%w: throttle_until needs throttle_per_s", ErrInvalid)
		}
		if p.ThrottlePerS != nil {
			if err := CheckRate("throttle_per_s", *p.ThrottlePerS); err != nil {
				return err
			}
			if p.ThrottleUntil != nil && !p.ThrottleUntil.IsZero() {
				if err := CheckTime("throttle_until", *p.ThrottleUntil); err != nil {
					return err
				}
			}
			st.ThrottlePerS = *p.ThrottlePerS
			st.ThrottleUntilUnixNano = 0
			if p.ThrottleUntil != nil && !p.ThrottleUntil.IsZero() {
				st.ThrottleUntilUnixNano = p.ThrottleUntil.UnixNano()
			}
		}
		return nil
	})
}

// Delete removes the key from the key-state log: verifiers then answer
// unknown. Prefer Revoke, which keeps the record and its reason.
func (s *Service) Delete(ctx context.Context, id string) error {
	if _, err := s.current(id); err != nil {
		return err
	}
	if s.kl.CompareAndSet() == nil {
		// The revocation record first, whatever this table shows (a
		// revocation may be on its way): left alone it would stay in the
		// log, and readers keep it pending for a key that never comes.
		if err := s.kl.DeleteKey(ctx, RevocationRecordID(id)); err != nil {
			return fmt.Errorf("keys: delete %s: %w", id, err)
		}
	}
	if err := s.kl.DeleteKey(ctx, id); err != nil {
		return fmt.Errorf("keys: delete %s: %w", id, err)
	}
	wctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.table.WaitVersion(wctx, id, 0); err != nil {
		return fmt.Errorf("%w: delete of %s: %w", ErrNotVisible, id, err)
	}
	s.log.Info("key deleted", "key_id", id)
	return nil
}

// Get returns the key's full state.
func (s *Service) Get(id string) (*keymeterv1.KeyState, error) { return s.current(id) }

// List returns the keys of project (all projects when empty), by id.
func (s *Service) List(project string) []*keymeterv1.KeyState {
	return s.table.States(func(st *keymeterv1.KeyState) bool {
		return project == "" || st.GetProject() == project
	})
}

func (s *Service) current(id string) (*keymeterv1.KeyState, error) {
	st, ok := s.table.State(id)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return st, nil
}

// modify is a read-modify-write of one key's state, with compare-and-set
// where the key log has it (NATS). Without it (Kafka), two admins changing
// the same key at the same instant may lose one change; versions make the
// loss visible (the table ignores older versions).
func (s *Service) modify(ctx context.Context, id string, fn func(*keymeterv1.KeyState) error) error {
	cas := s.kl.CompareAndSet()
	for attempt := 1; ; attempt++ {
		st, rev, ok := s.table.StateRevision(id)
		if !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if err := fn(st); err != nil {
			return err
		}
		st.Version++
		st.UpdatedUnixNano = s.now().UnixNano()
		if cas == nil || rev == 0 {
			// No compare-and-set (Kafka): versions make a lost update
			// visible, and the table keeps a revocation final.
			return s.write(ctx, st, nil, 0)
		}
		err := s.write(ctx, st, cas, rev)
		if !errors.Is(err, bus.ErrRevisionMismatch) || attempt == 20 {
			return err
		}
		// Someone else changed the key since we read it: read again once
		// our table has their change.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * 2 * time.Millisecond):
		}
	}
}

// write puts st, with compare-and-set at rev when cas is given, and waits
// until the table shows it.
func (s *Service) write(ctx context.Context, st *keymeterv1.KeyState, cas bus.KeyCAS, rev uint64) error {
	b, err := proto.Marshal(st)
	if err != nil {
		return fmt.Errorf("keys: encoding key %s: %w", st.GetId(), err)
	}
	if cas != nil {
		err = cas.PutKeyIf(ctx, st.GetId(), b, rev)
	} else {
		err = s.kl.PutKey(ctx, st.GetId(), b)
	}
	if err != nil {
		return fmt.Errorf("keys: writing key %s: %w", st.GetId(), err)
	}
	wctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.table.WaitVersion(wctx, st.GetId(), st.GetVersion()); err != nil {
		return fmt.Errorf("%w: key %s version %d: %w", ErrNotVisible, st.GetId(), st.GetVersion(), err)
	}
	return nil
}

func checkLimits(l *KeyLimits) error {
	if err := CheckRate("rate_limit_per_s", l.RatePerS); err != nil {
		return err
	}
	if !l.ExpiresAt.IsZero() {
		if err := CheckTime("expires_at", l.ExpiresAt); err != nil {
			return err
		}
	}
	for i, c := range l.AllowedCIDRs {
		if _, err := ParseCIDR(c); err != nil {
			return fmt.Errorf("%w: allowed_cidrs[%d]: %w", ErrInvalid, i, err)
		}
	}
	for i, sc := range l.Scopes {
		if sc == "" {
			return fmt.Errorf("%w: scopes[%d] is empty", ErrInvalid, i)
		}
	}
	return nil
}

func applyLimits(st *keymeterv1.KeyState, l *KeyLimits) {
	st.Scopes = append([]string(nil), l.Scopes...)
	st.AllowedCidrs = st.AllowedCidrs[:0:0]
	for _, c := range l.AllowedCIDRs {
		p, _ := ParseCIDR(c)
		st.AllowedCidrs = append(st.AllowedCidrs, p.String())
	}
	st.RateLimitPerS = l.RatePerS
	st.RateLimitBurst = l.Burst
	st.MonthlyQuota = l.MonthlyQuota
	st.ExpiresUnixNano = 0
	if !l.ExpiresAt.IsZero() {
		st.ExpiresUnixNano = l.ExpiresAt.UnixNano()
	}
}

// Kind returns the declared kind of key id (server, browser, mobile, batch)
// from the table, KindServer when the key is unknown: what detection rules
// read as key_kind.
func (s *Service) Kind(id string) string {
	if r := s.table.ByID(id); r != nil {
		return KindOf(r.Kind)
	}
	return KindServer
}
