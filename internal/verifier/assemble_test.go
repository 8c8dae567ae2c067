package verifier

import (
	"context"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

// A role that fails to assemble after its emitter opened (here: its
// metrics clash with ones already registered) gives back the data
// directory's lock, so the next attempt on the same directory starts.
func TestAssembleFailureReleasesDataDir(t *testing.T) {
	b := natstest.Bus(t, natstest.Server(t), natsbus.Config{})
	dir := t.TempDir()
	clash := prometheus.NewRegistry()
	clash.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "keymeter_verifier_decisions_total", Help: "taken"}))
	cfg := RunConfig{Bus: b, DataDir: dir, VerifierID: "v-assemble", Registry: clash}
	if r, err := assemble(cfg, slog.New(slog.DiscardHandler)); err == nil {
		_ = r.em.Close(context.Background())
		t.Fatal("assemble succeeded with clashing metrics")
	}
	cfg.Registry = prometheus.NewRegistry()
	r, err := assemble(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("second assemble on the same data directory: %v", err)
	}
	if err := r.em.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}
