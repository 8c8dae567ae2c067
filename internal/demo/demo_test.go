package demo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAdminTokenKeptPrivate(t *testing.T) {
	dir := t.TempDir()
	tok, err := AdminToken(dir)
	if err != nil || !strings.HasPrefix(tok, "kmadm_") {
		t.Fatalf("token %q, %v", tok, err)
	}
	p := filepath.Join(dir, "admin-token")
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin-token: %v %v", fi.Mode(), err)
	}
	if again, err := AdminToken(dir); err != nil || again != tok {
		t.Fatalf("second start: %q %v, want the first token", again, err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := AdminToken(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a token others can read: %v", err)
	}
}
