package verifier

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/keys"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNoSecretInLogs runs create → verify (header, query parameter, bad
// checksum) → rotate → revoke with every component logging at debug level,
// and finds neither the secrets nor their hashes in the output.
func TestNoSecretInLogs(t *testing.T) {
	ctx := context.Background()
	var buf syncBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n := startNATS(t)
	b, err := natsbus.New(ctx, natsbus.Config{URL: n.url, CredsFile: n.creds()}, natsbus.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	svc := newService(t, ctx, b, log)
	up, _ := newUpstream(t)
	rv := startVerifier(t, b, RunConfig{Upstream: up.URL, Logger: log, HTTP: HTTPConfig{QueryParam: "key"}})

	k, err := svc.Create(ctx, keys.CreateParams{Project: "acme", Name: "logs", Owner: "sec@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{k.Secret.Reveal()}
	waitOutcome(t, rv, k.Secret.Reveal(), "valid")
	do(t, "GET", rv.main+"/v1/a", map[string]string{"Authorization": "Bearer " + k.Secret.Reveal()})
	do(t, "GET", rv.main+"/v1/a?key="+k.Secret.Reveal(), nil)
	bad := k.Secret.Reveal()[:len(k.Secret.Reveal())-1] + "0"
	do(t, "GET", rv.main+"/v1/a", map[string]string{"X-API-Key": bad})
	r, err := svc.Rotate(ctx, k.State.GetId(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, r.Secret.Reveal())
	waitOutcome(t, rv, r.Secret.Reveal(), "valid")
	if err := svc.Revoke(ctx, k.State.GetId(), "test"); err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, rv, k.Secret.Reveal(), "revoked")
	if err := rv.stop(); err != nil {
		t.Fatal(err)
	}

	out := buf.String()
	if !strings.Contains(out, `"level":"DEBUG"`) || !strings.Contains(out, k.State.GetId()) {
		t.Fatalf("debug logging not captured:\n%s", out)
	}
	for _, s := range append(secrets, bad) {
		h := keys.HashSecret(s)
		for _, needle := range []string{s[8:24], s[24:], hex.EncodeToString(h[:8]), base64.StdEncoding.EncodeToString(h[:])[:12]} {
			if strings.Contains(out, needle) {
				t.Fatalf("log output contains secret material %q:\n%s", needle, out)
			}
		}
	}
}
