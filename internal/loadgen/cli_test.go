package loadgen

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRunNDJSONAndFlagErrors(t *testing.T) {
	var out, log bytes.Buffer
	base := RunConfig{Gen: Config{Scenarios: []string{"normal"}, Rate: 20, Duration: 2 * time.Second, Seed: 3}, Stdout: &out, Stderr: &log}
	if err := Run(context.Background(), base); err == nil || !strings.Contains(err.Error(), "exactly one of --target") {
		t.Fatalf("neither --target nor --out: %v", err)
	}
	o := base
	o.Target, o.Synthetic = "http://127.0.0.1:1", 2
	if err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "--keys-file") {
		t.Fatalf("--target with synthetic keys: %v", err)
	}
	o = base
	o.Out, o.Synthetic, o.Start = filepath.Join(t.TempDir(), "ev.ndjson"), 2, "2026-11-01T00:00:00Z"
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(o.Out)
	if err != nil || !bytes.Contains(b, []byte("key_synthetic_0001")) || !strings.Contains(log.String(), "seed 3") {
		t.Fatalf("events %d bytes (%v), log %q", len(b), err, log.String())
	}
	o.Start = "yesterday"
	if err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "--start") {
		t.Fatalf("bad --start: %v", err)
	}
	if err := Run(context.Background(), RunConfig{Eval: true, Out: o.Out}); err == nil || !strings.Contains(err.Error(), "--labels-out") {
		t.Fatalf("--eval without --labels-out: %v", err)
	}
}
