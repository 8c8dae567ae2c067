package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Run from a directory without rules/ (after go install, in a container),
// the commands that need rules use the ones built into the binary.
func TestRulesWithoutRulesDirectory(t *testing.T) {
	bin := keymeterBinary(t)
	dir := t.TempDir()
	events := filepath.Join(dir, "events.ndjson")
	line := `{"id":"e1","time":"2026-03-01T00:00:00Z","project":"p","key_id":"key_1","outcome":"valid","client_ip":"203.0.113.9","country":"DE"}` + "\n"
	if err := os.WriteFile(events, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"rules", "backtest", "--events", events},
		{"bench", "detect", "--events", "2000", "--keys", "1000", "--workers", "1", "--batch", "500"},
		// The detector role with its hot reloader, as keymeter dev runs it.
		{"bench", "revoke-e2e", "--bus", "nats", "--trials", "2", "--log-level", "warn"},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("keymeter %s in an empty directory: %v\n%s", strings.Join(args, " "), err, out)
		}
		if args[0] == "bench" && !strings.Contains(string(out), "bench="+args[1]) {
			t.Fatalf("keymeter %s printed no summary:\n%s", strings.Join(args, " "), out)
		}
	}
}
