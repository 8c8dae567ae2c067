package main

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// make run's path: keymeter dev for a bounded time, demo traffic flows,
// usage is stored, an attack leads to a revocation, shutdown is clean, and
// a second start on the same data directory finds its state.
func TestDevRunsThePipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("runs keymeter dev for a minute; not in -short")
	}
	bin := keymeterBinary(t)
	dir := t.TempDir()
	rules, _ := filepath.Abs("../../rules")
	args := []string{"dev", "--data-dir", dir, "--rules", rules, "--nats-port", "0", "--proxy-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0", "--summary-every", "2s", "--log-level", "warn", "--seed", "3"}
	last := runDevProcess(t, bin, append(args, "--duration", "30s"))
	if last["revoked"] < 1 {
		t.Fatalf("no attack led to a revocation within 30s: %v", last)
	}
	if last["stored"] < 1000 || last["requests"] < 1000 {
		t.Fatalf("demo traffic did not flow into the store: %v", last)
	}
	if last["stored"] < last["requests"] {
		t.Fatalf("shutdown left events unstored: %v", last)
	}
	// A second start on the same data: the keys and the store are still there.
	again := runDevProcess(t, bin, append(args, "--duration", "12s"))
	if again["keys"] < 21 || again["stored"] == 0 {
		t.Fatalf("restart lost state: %v", again)
	}
}

var figure = regexp.MustCompile(`(\w+)=([0-9.]+)`)

// runDevProcess runs keymeter dev to its end and returns the figures of its last
// summary line.
func runDevProcess(t *testing.T, bin string, args []string) map[string]float64 {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	sc := bufio.NewScanner(out)
	lines := 0
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "stored=") {
			continue
		}
		lines++
		for _, m := range figure.FindAllStringSubmatch(line, -1) {
			v, _ := strconv.ParseFloat(m[2], 64)
			got[m[1]] = v
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("keymeter dev: %v\n%s", err, stderr.String())
	}
	if lines < 2 {
		t.Fatalf("keymeter dev printed %d summary lines\n%s", lines, stderr.String())
	}
	return got
}
