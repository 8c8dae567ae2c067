package leaks_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/leaks"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

func TestSignedReportRevokesTruePositives(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 1})
	table, svc := natstest.Keys(t, b)
	leaked, err := svc.Create(ctx, keys.CreateParams{Project: "proj_leak"})
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	h, err := leaks.New(leaks.Config{Table: table, Keys: svc, Decisions: b, PublicKeys: map[string]*ecdsa.PublicKey{"k1": &priv.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal([]leaks.Report{
		{Token: leaked.Secret.Reveal(), Type: "keymeter_api_key", URL: "https://example.com/gist", Source: "gist"},
		{Token: "km_live_not_a_real_key", Type: "keymeter_api_key", Source: "content"},
	})
	post := func(sig string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/v1/leaks", bytes.NewReader(body))
		req.Header.Set("Github-Public-Key-Identifier", "k1")
		req.Header.Set("Github-Public-Key-Signature", sig)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	digest := sha256.Sum256(body)
	der, _ := ecdsa.SignASN1(rand.Reader, priv, digest[:])
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged, _ := ecdsa.SignASN1(rand.Reader, other, digest[:])
	if rec := post(base64.StdEncoding.EncodeToString(forged)); rec.Code != http.StatusUnauthorized {
		t.Fatalf("forged signature: %d %s", rec.Code, rec.Body)
	}
	if st, _ := table.State(leaked.State.GetId()); st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_ACTIVE {
		t.Fatal("a forged report changed the key")
	}
	rec := post(base64.StdEncoding.EncodeToString(der))
	if rec.Code != 200 {
		t.Fatalf("signed report: %d %s", rec.Code, rec.Body)
	}
	var labels []leaks.Label
	_ = json.Unmarshal(rec.Body.Bytes(), &labels)
	if len(labels) != 2 || labels[0].Label != "true_positive" || labels[1].Label != "false_positive" {
		t.Fatalf("labels: %+v", labels)
	}
	if bytes.Contains(rec.Body.Bytes(), []byte(leaked.Secret.Reveal())) {
		t.Fatal("the answer repeats the secret")
	}
	st, _ := table.State(leaked.State.GetId())
	if st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_REVOKED || st.GetRevokeReason() == "" {
		t.Fatalf("leaked key not revoked: %v %q", st.GetStatus(), st.GetRevokeReason())
	}
	// By hash, as keymeter keys report-leak sends it: already revoked, still a true positive.
	sum := sha256.Sum256([]byte(leaked.Secret.Reveal()))
	if l := h.HandleHash(ctx, sum, "operator", ""); l.Label != "true_positive" {
		t.Fatalf("by hash: %+v", l)
	}
}

// A signed report replayed three times is acted on once: one decision, and
// the copies are answered as duplicates. The API that handled it has no
// store (api --store none); another process with a store records its
// decision from the bus (Recorder), so /v1/decisions lists it.
func TestReplayedReportIsOneDecisionRecordedThroughTheBus(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 1})
	table, svc := natstest.Keys(t, b)
	db, err := chdb.Open(chdb.Config{DataDir: t.TempDir(), Database: "leaks_test"})
	if err != nil {
		t.Fatalf("open chdb (CHDB_LIB_PATH=%q): %v", os.Getenv("CHDB_LIB_PATH"), err)
	}
	defer db.Close(context.Background())
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	// The recorder stops before the store closes (defers run last first).
	recorded := make(chan struct{})
	go func() { defer close(recorded); _ = leaks.Recorder(ctx, b, db, slog.New(slog.DiscardHandler)) }()
	defer func() { cancel(); <-recorded }()

	leaked, err := svc.Create(ctx, keys.CreateParams{Project: "proj_leak"})
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// No store: the handler only publishes its decision.
	h, err := leaks.New(leaks.Config{Table: table, Keys: svc, Decisions: b, PublicKeys: map[string]*ecdsa.PublicKey{"k1": &priv.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal([]leaks.Report{{Token: leaked.Secret.Reveal(), Type: "keymeter_api_key", Source: "gist"}})
	digest := sha256.Sum256(body)
	der, _ := ecdsa.SignASN1(rand.Reader, priv, digest[:])
	for i := range 3 {
		req := httptest.NewRequest("POST", "/v1/leaks", bytes.NewReader(body))
		req.Header.Set("Github-Public-Key-Identifier", "k1")
		req.Header.Set("Github-Public-Key-Signature", base64.StdEncoding.EncodeToString(der))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var labels []leaks.Label
		if err := json.Unmarshal(rec.Body.Bytes(), &labels); err != nil || rec.Code != 200 || len(labels) != 1 {
			t.Fatalf("post %d: %d %s", i, rec.Code, rec.Body)
		}
		if labels[0].Label != "true_positive" || labels[0].Duplicate != (i > 0) {
			t.Fatalf("post %d: label %+v, want duplicate=%v", i, labels[0], i > 0)
		}
	}
	// The operator's report by hash, twice: the second is a duplicate.
	sum := sha256.Sum256([]byte(leaked.Secret.Reveal()))
	if l := h.HandleHash(ctx, sum, "operator", "https://example.com/x"); l.Duplicate {
		t.Fatalf("first hash report: %+v", l)
	}
	if l := h.HandleHash(ctx, sum, "operator", "https://example.com/x"); !l.Duplicate {
		t.Fatalf("second hash report: %+v", l)
	}
	var ds []store.Decision
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ds, err = db.Decisions(ctx, store.DecisionQuery{KeyID: leaked.State.GetId()})
		if err == nil && len(ds) >= 2 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Wait a little longer for copies that should not exist.
	time.Sleep(300 * time.Millisecond)
	ds, err = db.Decisions(ctx, store.DecisionQuery{KeyID: leaked.State.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 {
		t.Fatalf("%d stored decisions, want 2 (one per distinct report): %+v", len(ds), ds)
	}
	for _, d := range ds {
		if d.RuleID != leaks.RuleID || d.Action != "revoke" {
			t.Fatalf("decision %+v", d)
		}
	}
}
