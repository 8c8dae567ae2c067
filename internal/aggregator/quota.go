package aggregator

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/ctxtime"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/store"
)

// KeyStates reads the latest full state of a key (keys.Table does).
type KeyStates interface {
	State(id string) (*keymeterv1.KeyState, bool)
}

// QuotaConfig configures quota tracking.
type QuotaConfig struct {
	// Period is "month" (default) or "day": quotas reset at its start (UTC).
	Period string
	// WarnRatio is the share of the quota at which a key turns to warning (default 0.8).
	WarnRatio float64
	// PublishStep republishes a key's usage when it grew by this share of
	// its quota since the last publish (default 0.01), so verifiers' local
	// counts start from a recent figure.
	PublishStep float64
	// WebhookURL, if set, receives a POST on every state transition, signed
	// with HMAC-SHA256 of the body under WebhookSecret in
	// X-Keymeter-Signature: sha256=<hex>.
	WebhookURL    string
	WebhookSecret string
	Now           func() time.Time

	// Keys reads key states (the key table), KeyLog receives the
	// transitions, Usage gives each key's usage at the period's start.
	Keys   KeyStates
	KeyLog bus.KeyLog
	Usage  store.UsageReader
}

// withDefaults returns c with its zero fields set to their defaults.
func (c QuotaConfig) withDefaults() QuotaConfig {
	if c.Period == "" {
		c.Period = "month"
	}
	if c.WarnRatio == 0 {
		c.WarnRatio = 0.8
	}
	if c.PublishStep == 0 {
		c.PublishStep = 0.01
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports every problem of the settings (zero fields take their
// defaults); it changes nothing. The dependencies are checked by NewQuotas.
func (c *QuotaConfig) Validate() error {
	d := c.withDefaults()
	var errs []error
	if d.Period != "month" && d.Period != "day" {
		errs = append(errs, fmt.Errorf("quota: period %q: accepted values are month, day", d.Period))
	}
	if d.WarnRatio <= 0 || d.WarnRatio >= 1 {
		errs = append(errs, fmt.Errorf("quota: warn ratio %g must be between 0 and 1", d.WarnRatio))
	}
	if d.PublishStep < 0 || d.PublishStep >= 1 {
		errs = append(errs, fmt.Errorf("quota: publish step %g must be between 0 and 1", d.PublishStep))
	}
	if d.WebhookURL != "" && d.WebhookSecret == "" {
		errs = append(errs, errors.New("quota: a webhook needs a secret to sign with (quota-webhook-secret)"))
	}
	return errors.Join(errs...)
}

// PeriodStart is the start of the quota period containing t.
func (c *QuotaConfig) PeriodStart(t time.Time) time.Time {
	t = t.UTC()
	if c.Period == "day" {
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	}
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// Quotas follows each key's usage in the current period and publishes
// ok → warning → exceeded transitions to the key-state log. It is the
// aggregator's Observer: it sees every block once it is stored.
type Quotas struct {
	cfg    QuotaConfig
	keys   KeyStates
	log    bus.KeyLog
	usage  store.UsageReader
	logger *slog.Logger
	client *http.Client

	mu     sync.Mutex
	period time.Time
	used   map[string]*keyUsage
}

type keyUsage struct {
	used      uint64
	published uint64
	state     keymeterv1.QuotaState
}

// QuotaOption configures NewQuotas.
type QuotaOption func(*Quotas) error

// WithQuotaLogger sets the quota tracker's logger (default slog.Default()).
func WithQuotaLogger(l *slog.Logger) QuotaOption {
	return func(q *Quotas) error {
		if l == nil {
			return errors.New("quota: WithQuotaLogger(nil)")
		}
		q.logger = l
		return nil
	}
}

// NewQuotas returns the quota tracker.
func NewQuotas(cfg QuotaConfig, opts ...QuotaOption) (*Quotas, error) {
	err := cfg.Validate()
	if cfg.Keys == nil || cfg.KeyLog == nil || cfg.Usage == nil {
		err = errors.Join(err, errors.New("quota: key states, key log and usage reader are required"))
	}
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	q := &Quotas{cfg: cfg, keys: cfg.Keys, log: cfg.KeyLog, usage: cfg.Usage, logger: slog.Default(),
		client: &http.Client{Timeout: 5 * time.Second}, used: map[string]*keyUsage{}}
	for _, o := range opts {
		if err := o(q); err != nil {
			return nil, err
		}
	}
	q.logger = q.logger.With("role", "quota")
	return q, nil
}

var _ Observer = (*Quotas)(nil)

// Reset forgets the counts: the keys' partitions may have moved to other
// aggregators and back (a consumer group rebalance), so each key's usage is
// read from the store again at its next block.
func (q *Quotas) Reset() {
	q.mu.Lock()
	q.used = map[string]*keyUsage{}
	q.mu.Unlock()
}

// Stored counts a stored block's allowed requests per key.
func (q *Quotas) Stored(ctx context.Context, events []event.Event) {
	now := q.cfg.Now()
	ps := q.cfg.PeriodStart(now)
	counts := map[string]uint64{}
	for i := range events {
		e := &events[i]
		if e.KeyID == "" || e.Outcome != event.OutcomeValid || e.Time.Before(ps) {
			continue
		}
		counts[e.KeyID]++
	}
	q.mu.Lock()
	if !ps.Equal(q.period) {
		// A new period: every key starts again from zero.
		q.period = ps
		q.used = map[string]*keyUsage{}
	}
	q.mu.Unlock()
	for id, n := range counts {
		st, ok := q.keys.State(id)
		if !ok || st.GetMonthlyQuota() == 0 {
			continue
		}
		q.mu.Lock()
		ku := q.used[id]
		q.mu.Unlock()
		if ku == nil {
			// First sight this period: the store already holds this block.
			u, err := q.usage.QuotaUsage(ctx, id, ps)
			if err != nil {
				q.logger.Warn("quota: cannot read usage; counting from this block", "key_id", id, "err", err)
				u.Allowed = n
			}
			ku = &keyUsage{used: u.Allowed, state: st.GetQuotaState()}
			if st.GetQuotaPeriodStartUnixNano() == ps.UnixNano() {
				ku.published = st.GetQuotaUsed()
			} else {
				ku.state = keymeterv1.QuotaState_QUOTA_STATE_UNSPECIFIED
			}
			q.mu.Lock()
			q.used[id] = ku
			q.mu.Unlock()
		} else {
			ku.used += n
		}
		q.evaluate(ctx, st, ku, ps)
	}
}

func (q *Quotas) stateFor(used, quota uint64) keymeterv1.QuotaState {
	switch {
	case used >= quota:
		return keymeterv1.QuotaState_QUOTA_STATE_EXCEEDED
	case float64(used) >= q.cfg.WarnRatio*float64(quota):
		return keymeterv1.QuotaState_QUOTA_STATE_WARNING
	}
	return keymeterv1.QuotaState_QUOTA_STATE_OK
}

func (q *Quotas) evaluate(ctx context.Context, st *keymeterv1.KeyState, ku *keyUsage, ps time.Time) {
	quota := st.GetMonthlyQuota()
	next := q.stateFor(ku.used, quota)
	step := uint64(q.cfg.PublishStep * float64(quota))
	transition := next != ku.state
	if !transition && ku.used < ku.published+max(step, 1) {
		return
	}
	// Write over the latest state, with compare-and-set where the key log
	// has it, so a quota update never undoes a revocation made meanwhile.
	cur, rev := st, uint64(0)
	if sr, ok := q.keys.(interface {
		StateRevision(string) (*keymeterv1.KeyState, uint64, bool)
	}); ok {
		if c, r, ok := sr.StateRevision(st.GetId()); ok {
			cur, rev = c, r
		}
	}
	ns := proto.CloneOf(cur)
	ns.QuotaState = next
	ns.QuotaUsed = ku.used
	ns.QuotaPeriodStartUnixNano = ps.UnixNano()
	ns.Version++
	ns.UpdatedUnixNano = q.cfg.Now().UnixNano()
	b, err := proto.Marshal(ns)
	if cas := q.log.CompareAndSet(); err == nil && cas != nil && rev > 0 {
		err = cas.PutKeyIf(ctx, ns.GetId(), b, rev)
	} else if err == nil {
		err = q.log.PutKey(ctx, ns.GetId(), b)
	}
	if err != nil {
		q.logger.Warn("quota: cannot publish key state; will retry on the next block", "key_id", st.GetId(), "err", err)
		return
	}
	prev := ku.state
	ku.state, ku.published = next, ku.used
	if transition {
		// A key's first state of the period (unknown to ok) is no news:
		// at start-up it would be one line per key.
		level := slog.LevelInfo
		if prev == keymeterv1.QuotaState_QUOTA_STATE_UNSPECIFIED && next == keymeterv1.QuotaState_QUOTA_STATE_OK {
			level = slog.LevelDebug
		}
		q.logger.Log(ctx, level, "quota state changed", "key_id", st.GetId(), "project", st.GetProject(), "from", quotaName(prev), "to", quotaName(next), "used", ku.used, "quota", quota)
		if q.cfg.WebhookURL != "" {
			go q.notify(context.WithoutCancel(ctx), st, prev, next, ku.used, quota, ps)
		}
	}
}

func quotaName(s keymeterv1.QuotaState) string {
	switch s {
	case keymeterv1.QuotaState_QUOTA_STATE_OK:
		return "ok"
	case keymeterv1.QuotaState_QUOTA_STATE_WARNING:
		return "warning"
	case keymeterv1.QuotaState_QUOTA_STATE_EXCEEDED:
		return "exceeded"
	}
	return "unknown"
}

// WebhookPayload is the body of a quota notification.
type WebhookPayload struct {
	Type        string    `json:"type"` // quota.transition
	KeyID       string    `json:"key_id"`
	Project     string    `json:"project"`
	From        string    `json:"from"`
	To          string    `json:"to"`
	Used        uint64    `json:"used"`
	Quota       uint64    `json:"quota"`
	PeriodStart time.Time `json:"period_start"`
	Time        time.Time `json:"time"`
}

// Sign is the signature header value of body under secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func (q *Quotas) notify(ctx context.Context, st *keymeterv1.KeyState, from, to keymeterv1.QuotaState, used, quota uint64, ps time.Time) {
	body, _ := json.Marshal(WebhookPayload{Type: "quota.transition", KeyID: st.GetId(), Project: st.GetProject(),
		From: quotaName(from), To: quotaName(to), Used: used, Quota: quota, PeriodStart: ps, Time: q.cfg.Now().UTC()})
	backoff := 500 * time.Millisecond
	for attempt := 1; attempt <= 6; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, q.cfg.WebhookURL, bytes.NewReader(body))
		if err != nil {
			q.logger.Error("quota webhook: bad URL", "err", err)
			return
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Keymeter-Signature", Sign(q.cfg.WebhookSecret, body))
		resp, err := q.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if attempt == 6 {
			q.logger.Warn("quota webhook: giving up", "key_id", st.GetId(), "attempts", attempt, "err", err)
			return
		}
		_ = ctxtime.Sleep(ctx, backoff)
		backoff *= 2
	}
}
