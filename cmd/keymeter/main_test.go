package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// keymeterBinary builds the binary once for tests that run it as separate
// OS processes.
func keymeterBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keymeter-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "keymeter")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = err
			t.Logf("go build: %s", out)
		}
	})
	if binErr != nil {
		t.Fatalf("building keymeter: %v", binErr)
	}
	return binPath
}
