// Package leaks takes reports of leaked keys: from secret scanners in the
// GitHub secret-scanning partner format (a signed JSON array of
// {token, type, url, source}), and from operators by hash. Each reported
// token is looked up by its SHA-256; a key that exists is a true positive
// and is revoked (policy revoke, the default) or alerted on (policy alert).
// A reported secret is never logged or stored: only its key id.
package leaks

import (
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
	Logger     *slog.Logger
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
}

// Handler serves the reports.
type Handler struct{ cfg Config }

// New validates the config.
func New(cfg Config) (*Handler, error) {
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
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Handler{cfg: cfg}, nil
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
		writeErr(w, 400, "invalid_argument", "body: "+err.Error())
		return
	}
	if err := h.verify(r.Header.Get("Github-Public-Key-Identifier"), r.Header.Get("Github-Public-Key-Signature"), body); err != nil {
		writeErr(w, 401, "unauthenticated", err.Error())
		return
	}
	var reports []Report
	if err := json.Unmarshal(body, &reports); err != nil {
		writeErr(w, 400, "invalid_argument", "want a JSON array of {token, type, url, source}: "+err.Error())
		return
	}
	labels := make([]Label, 0, len(reports))
	for i, rep := range reports {
		if rep.Token == "" {
			writeErr(w, 400, "invalid_argument", fmt.Sprintf("report %d: token is required", i))
			return
		}
		sum := sha256.Sum256([]byte(rep.Token))
		labels = append(labels, h.handle(r.Context(), sum, rep.Type, rep.Source, rep.URL))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(labels)
}

// HandleHash acts on one leaked key known by the SHA-256 of its secret.
func (h *Handler) HandleHash(ctx context.Context, sum [32]byte, source, url string) Label {
	return h.handle(ctx, sum, "keymeter_api_key", source, url)
}

func (h *Handler) handle(ctx context.Context, sum [32]byte, typ, source, url string) Label {
	l := Label{TokenHash: hex.EncodeToString(sum[:]), TokenType: typ, Label: "false_positive"}
	hash := keys.Hash(sum)
	slot := h.cfg.Table.Lookup(&hash)
	if slot == nil || slot.Record() == nil {
		return l
	}
	rec := slot.Record()
	l.Label = "true_positive"
	reason := fmt.Sprintf("leaked: reported by %s", orUnknown(source))
	if url != "" {
		reason += " at " + url
	}
	h.cfg.Logger.Warn("leaked key reported", "key_id", rec.ID, "project", rec.Project, "source", source, "policy", h.cfg.Policy)
	if h.cfg.Decisions != nil {
		d := &keymeterv1.Decision{Id: fmt.Sprintf("leak/%s/%d", rec.ID, time.Now().UnixNano()), TimeUnixNano: time.Now().UnixNano(),
			RuleId: "leak-report", RuleVersion: 1, Severity: "critical", Mode: keymeterv1.Mode_MODE_ENFORCE,
			Action: keymeterv1.Action_ACTION_ALERT, Group: rec.ID, Project: rec.Project, KeyId: rec.ID, Reason: reason}
		if h.cfg.Policy == "revoke" {
			d.Action = keymeterv1.Action_ACTION_REVOKE
		}
		if h.cfg.Store != nil {
			ev, _ := json.Marshal(map[string]string{"source": source, "url": url, "token_type": typ})
			if err := h.cfg.Store.WriteDecisions(ctx, []store.Decision{{ID: d.Id, Time: time.Unix(0, d.TimeUnixNano).UTC(), RuleID: d.RuleId,
				RuleVersion: d.RuleVersion, Mode: "enforce", Action: map[bool]string{true: "revoke", false: "alert"}[h.cfg.Policy == "revoke"],
				Project: d.Project, KeyID: d.KeyId, GroupKey: d.Group, Reason: reason, Evidence: string(ev)}}); err != nil {
				h.cfg.Logger.Warn("leak decision not stored", "key_id", rec.ID, "err", err)
			}
		}
		if raw, err := proto.Marshal(d); err == nil {
			if err := h.cfg.Decisions.PublishDecision(ctx, rec.ID, raw); err != nil {
				h.cfg.Logger.Warn("leak decision not published", "key_id", rec.ID, "err", err)
			}
		}
	}
	if h.cfg.Policy == "revoke" {
		if err := h.cfg.Keys.Revoke(ctx, rec.ID, reason); err != nil && !errors.Is(err, keys.ErrConflict) {
			h.cfg.Logger.Error("leaked key not revoked", "key_id", rec.ID, "err", err)
		}
	}
	return l
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
