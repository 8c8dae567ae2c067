// Package leaks takes reports of leaked keys: from secret scanners in the
// GitHub secret-scanning partner format (a signed JSON array of
// {token, type, url, source}), and from operators by hash. Each reported
// token is looked up by its SHA-256; a key that exists is a true positive
// and is revoked (policy revoke, the default) or alerted on (policy alert).
// A reported secret is never logged or stored: only its key id.
//
// A report is acted on once: a replay of the same body (or of the same
// operator report) is answered with the same labels marked duplicate and
// changes nothing. Its decision's id derives from the report's digest, so
// that every copy of it, written directly or recorded from the bus
// (Recorder), is one row of the decision store.
package leaks

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/store"
)

// Revoker revokes keys (keys.Service).
type Revoker interface {
	Revoke(ctx context.Context, id, reason string) error
}

// Config wires the leak handler.
type Config struct {
	Table *keys.Table
	Keys  Revoker
	// Decisions, if set, receives a decision for every true positive.
	Decisions bus.Decisions
	// Store, if set, keeps those decisions with the detector's (audit,
	// GET /v1/decisions).
	Store store.DecisionStore
	// Policy is "revoke" (default) or "alert".
	Policy string
	// PublicKeys verify the reporter's signature, by key identifier
	// (the Github-Public-Key-Identifier header). Empty: signed reports are refused.
	PublicKeys map[string]*ecdsa.PublicKey
}

// Report is one reported token.
type Report struct {
	Token  string `json:"token"`
	Type   string `json:"type"`
	URL    string `json:"url"`
	Source string `json:"source"`
}

// Label is the answer for one token.
type Label struct {
	TokenHash string `json:"token_hash"`
	TokenType string `json:"token_type"`
	Label     string `json:"label"` // true_positive | false_positive
	// Duplicate: this report was received before and acted on then; this
	// copy changed nothing.
	Duplicate bool `json:"duplicate,omitempty"`
}

// RuleID is the rule id of leak decisions.
const RuleID = "leak-report"

// seenMax bounds the replay memory; seenFor is how long a report is remembered.
const (
	seenMax = 100_000
	seenFor = 7 * 24 * time.Hour
)

// Handler serves the reports.
type Handler struct {
	cfg Config
	log *slog.Logger

	mu   sync.Mutex
	seen map[[32]byte]time.Time // report digest → first received
}

// Option configures New.
type Option func(*Handler) error

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(h *Handler) error {
		if l == nil {
			return errors.New("leaks: WithLogger(nil)")
		}
		h.log = l
		return nil
	}
}

// New validates the config.
func New(cfg Config, opts ...Option) (*Handler, error) {
	if cfg.Table == nil {
		return nil, errors.New("leaks: a key table is required")
	}
	switch cfg.Policy {
	case "":
		cfg.Policy = "revoke"
	case "revoke", "alert":
	default:
		return nil, fmt.Errorf("leaks: policy %q: accepted values are revoke, alert", cfg.Policy)
	}
	if cfg.Policy == "revoke" && cfg.Keys == nil {
		return nil, errors.New("leaks: policy revoke needs a key service")
	}
	h := &Handler{cfg: cfg, seen: map[[32]byte]time.Time{}, log: slog.Default()}
	for _, o := range opts {
		if err := o(h); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// firstSeen records a report digest and returns when it was first seen
// and whether this is a replay.
func (h *Handler) firstSeen(digest [32]byte) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	if t, ok := h.seen[digest]; ok && now.Sub(t) < seenFor {
		return t, true
	}
	if len(h.seen) >= seenMax {
		for d, t := range h.seen {
			if now.Sub(t) >= seenFor || len(h.seen) >= seenMax {
				delete(h.seen, d)
			}
		}
	}
	h.seen[digest] = now
	return now, false
}

// ParsePublicKey reads a PEM "PUBLIC KEY" (ECDSA P-256, as GitHub publishes).
func ParsePublicKey(pemText []byte) (*ecdsa.PublicKey, error) {
	blk, _ := pem.Decode(pemText)
	if blk == nil {
		return nil, errors.New("leaks: public key is not PEM")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("leaks: public key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("leaks: public key is not ECDSA")
	}
	return ek, nil
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// ServeHTTP handles POST /v1/leaks.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			writeErr(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("request body over %d bytes", mb.Limit))
			return
		}
		writeErr(w, 400, "invalid_argument", "body: "+err.Error())
		return
	}
	if err := h.verify(r.Header.Get("Github-Public-Key-Identifier"), r.Header.Get("Github-Public-Key-Signature"), body); err != nil {
		writeErr(w, 401, "unauthenticated", err.Error())
		return
	}
	var reports []Report
	// Fields a scanner may add later are ignored (the partner format is
	// not ours); trailing data is not.
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&reports); err != nil {
		writeErr(w, 400, "invalid_argument", "want a JSON array of {token, type, url, source}: "+err.Error())
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		writeErr(w, 400, "invalid_argument", "trailing data after the JSON array")
		return
	}
	for i, rep := range reports {
		if rep.Token == "" {
			writeErr(w, 400, "invalid_argument", fmt.Sprintf("[%d].token is required", i))
			return
		}
	}
	// The signature covers the body: its digest identifies the report.
	digest := sha256.Sum256(body)
	at, dup := h.firstSeen(digest)
	labels := make([]Label, 0, len(reports))
	for i, rep := range reports {
		sum := sha256.Sum256([]byte(rep.Token))
		rd := sha256.Sum256(fmt.Appendf(digest[:], "/%d", i))
		labels = append(labels, h.handle(r.Context(), rd, at, dup, sum, rep.Type, rep.Source, rep.URL))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(labels)
}

// HandleHash acts on one leaked key known by the SHA-256 of its secret. The
// same report (hash, source and url) again is a duplicate.
func (h *Handler) HandleHash(ctx context.Context, sum [32]byte, source, url string) Label {
	digest := sha256.Sum256(fmt.Appendf(nil, "hash\x00%x\x00%s\x00%s", sum, source, url))
	at, dup := h.firstSeen(digest)
	return h.handle(ctx, digest, at, dup, sum, "keymeter_api_key", source, url)
}

// handle labels one token and, the first time its report is seen, acts on
// it. digest identifies the report (and the token within it); at is when
// it was first received.
func (h *Handler) handle(ctx context.Context, digest [32]byte, at time.Time, dup bool, sum [32]byte, typ, source, url string) Label {
	l := Label{TokenHash: hex.EncodeToString(sum[:]), TokenType: typ, Label: "false_positive", Duplicate: dup}
	hash := keys.Hash(sum)
	slot := h.cfg.Table.Lookup(&hash)
	if slot == nil || slot.Record() == nil {
		return l
	}
	rec := slot.Record()
	l.Label = "true_positive"
	id := fmt.Sprintf("leak/%s/%x", rec.ID, digest[:12])
	if !dup && h.cfg.Store != nil {
		// A replay after a restart: the decision is in the store already.
		ds, err := h.cfg.Store.Decisions(ctx, store.DecisionQuery{KeyID: rec.ID, RuleID: RuleID, Limit: 1000})
		for _, d := range ds {
			if err == nil && d.ID == id {
				dup, l.Duplicate = true, true
			}
		}
	}
	if dup {
		h.log.Info("leak report replayed; already acted on", "key_id", rec.ID, "source", source)
		return l
	}
	reason := fmt.Sprintf("leaked: reported by %s", orUnknown(source))
	if url != "" {
		reason += " at " + url
	}
	h.log.Warn("leaked key reported", "key_id", rec.ID, "project", rec.Project, "source", source, "policy", h.cfg.Policy)
	d := &keymeterv1.Decision{Id: id, TimeUnixNano: at.UnixNano(),
		RuleId: RuleID, RuleVersion: 1, Severity: "critical", Mode: keymeterv1.Mode_MODE_ENFORCE,
		Action: keymeterv1.Action_ACTION_ALERT, Group: rec.ID, Project: rec.Project, KeyId: rec.ID, Reason: reason}
	if h.cfg.Policy == "revoke" {
		d.Action = keymeterv1.Action_ACTION_REVOKE
	}
	if h.cfg.Store != nil {
		if err := h.cfg.Store.WriteDecisions(ctx, []store.Decision{ToStore(d)}); err != nil {
			h.log.Warn("leak decision not stored", "key_id", rec.ID, "err", err)
		}
	}
	if h.cfg.Decisions != nil {
		// Published also when stored here: an API with a store elsewhere
		// records it from the bus (Recorder), and verifiers see it.
		if raw, err := proto.Marshal(d); err == nil {
			if err := h.cfg.Decisions.PublishDecision(ctx, rec.ID, raw); err != nil {
				h.log.Warn("leak decision not published", "key_id", rec.ID, "err", err)
			}
		}
	}
	if h.cfg.Policy == "revoke" {
		if err := h.cfg.Keys.Revoke(ctx, rec.ID, reason); err != nil && !errors.Is(err, keys.ErrConflict) {
			h.log.Error("leaked key not revoked", "key_id", rec.ID, "err", err)
		}
	}
	return l
}

// ToStore is the stored form of a leak decision: the same however it
// reaches the store, so that copies collapse into one row.
func ToStore(d *keymeterv1.Decision) store.Decision {
	action := "alert"
	if d.GetAction() == keymeterv1.Action_ACTION_REVOKE {
		action = "revoke"
	}
	ev, _ := json.Marshal(map[string]string{"severity": d.GetSeverity(), "source": "leak report"})
	return store.Decision{ID: d.GetId(), Time: time.Unix(0, d.GetTimeUnixNano()).UTC(), RuleID: d.GetRuleId(),
		RuleVersion: d.GetRuleVersion(), Mode: "enforce", Action: action, Project: d.GetProject(), KeyID: d.GetKeyId(),
		GroupKey: d.GetGroup(), Reason: d.GetReason(), Evidence: string(ev)}
}

// Recorder stores the leak decisions published on the bus, so that an API
// with a store lists the revocations of leak reports handled by an API
// without one (api --store none). It replays the last day when the bus can
// (copies are one row: ids and times come from the decision) and runs
// until ctx ends.
func Recorder(ctx context.Context, ds bus.Decisions, st store.DecisionStore, log *slog.Logger) error {
	apply := func(data []byte) {
		var d keymeterv1.Decision
		if proto.Unmarshal(data, &d) != nil || d.GetRuleId() != RuleID || d.GetId() == "" {
			return
		}
		if err := st.WriteDecisions(ctx, []store.Decision{ToStore(&d)}); err != nil && ctx.Err() == nil {
			log.Warn("leak decision from the bus not stored", "key_id", d.GetKeyId(), "err", err)
		}
	}
	err := ds.SubscribeDecisionsSince(ctx, time.Now().Add(-24*time.Hour), apply)
	if err != nil || ctx.Err() != nil {
		return err
	}
	<-ctx.Done() // some buses subscribe in the background
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown source"
	}
	return s
}

// verify checks the reporter's ECDSA signature (base64 DER) of the body.
func (h *Handler) verify(keyID, sigB64 string, body []byte) error {
	if keyID == "" || sigB64 == "" {
		return errors.New("missing Github-Public-Key-Identifier or Github-Public-Key-Signature header")
	}
	pub, ok := h.cfg.PublicKeys[keyID]
	if !ok {
		return fmt.Errorf("unknown public key identifier %q", abbreviate(keyID))
	}
	sig, err := base64.StdEncoding.DecodeString(sigB64)
	if err != nil {
		return errors.New("signature is not base64")
	}
	var es struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(sig, &es); err != nil {
		return errors.New("signature is not ASN.1 DER")
	}
	digest := sha256.Sum256(body)
	if !ecdsa.Verify(pub, digest[:], es.R, es.S) {
		return errors.New("signature does not match the body")
	}
	return nil
}

func abbreviate(s string) string {
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}
