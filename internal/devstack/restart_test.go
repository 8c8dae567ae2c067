package devstack

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymeter/keymeter/internal/bus/busopen"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/store/storeopen"
)

// banner is a writer that closes up when the start-up banner is written.
type banner struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	up   chan struct{}
	once sync.Once
}

func (b *banner) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if strings.Contains(b.buf.String(), "keymeter dev is running") {
		b.once.Do(func() { close(b.up) })
	}
	return len(p), nil
}

// TestDevStartsAndStopsManyTimes starts the whole dev stack (embedded NATS
// and ClickHouse, verifier, aggregator, detector, API) on one data dir and
// stops it, several times in a row: every start must come up and every stop
// must be clean, with the state of the previous runs in place.
func TestDevStartsAndStopsManyTimes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the dev stack several times; not in -short")
	}
	const rounds = 10
	dir := t.TempDir()
	rulesDir, _ := filepath.Abs("../../rules")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := range rounds {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		st, b, note, err := Open(ctx, storeopen.Config{Backend: "chdb", DataDir: dir},
			busopen.Config{Backend: "nats", Prefix: "keymeter", Partitions: 2, MaxPending: 64, Replicas: 1}, 0, true, quiet)
		if err != nil {
			cancel()
			t.Fatalf("round %d: open: %v", i, err)
		}
		ban := &banner{up: make(chan struct{})}
		var out bytes.Buffer
		cfg := Config{DataDir: dir, Store: st, Bus: b, BusNote: note,
			Detector: func(ka detector.KeyActions, reg prometheus.Registerer) detector.RunConfig {
				return detector.Settings{Rules: []string{rulesDir}, Group: "detector"}.Config(b, st, ka, reg, quiet)
			},
			ProxyListen: "127.0.0.1:0", APIListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", MetricsListen: "127.0.0.1:0",
			DemoKeys: 2, NoTraffic: true, SummaryEvery: time.Hour, Logger: quiet, Out: &out, Err: ban}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- Run(runCtx, cfg) }()
		select {
		case <-ban.up:
		case err := <-done:
			t.Fatalf("round %d: dev stopped before it was up: %v\n%s", i, err, ban.buf.String())
		case <-ctx.Done():
			t.Fatalf("round %d: dev not up within 2 minutes:\n%s", i, ban.buf.String())
		}
		stop()
		if err := <-done; err != nil {
			t.Fatalf("round %d: dev stopped with %v", i, err)
		}
		if !strings.Contains(out.String(), "final requests=") {
			t.Errorf("round %d: no final line: %q", i, out.String())
		}
		if err := st.Close(context.Background()); err != nil {
			t.Errorf("round %d: store close: %v", i, err)
		}
		if err := b.Close(ctx); err != nil {
			t.Errorf("round %d: bus close: %v", i, err)
		}
		cancel()
	}
}
