package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDataDirTemporaryAndGiven(t *testing.T) {
	given := t.TempDir()
	d, cleanup, err := DataDir(given, false, "x")
	if err != nil || d != given {
		t.Fatalf("given dir: %q %v", d, err)
	}
	cleanup()
	if _, err := os.Stat(given); err != nil {
		t.Fatalf("cleanup removed a given directory: %v", err)
	}
	for _, keep := range []bool{false, true} {
		d, cleanup, err := DataDir("", keep, "x")
		if err != nil || !strings.HasPrefix(filepath.Base(d), "keymeter-bench-x-") {
			t.Fatalf("temporary dir %q: %v", d, err)
		}
		cleanup()
		_, err = os.Stat(d)
		if keep != (err == nil) {
			t.Fatalf("keep=%v: after cleanup stat says %v", keep, err)
		}
		os.RemoveAll(d)
	}
	rules, err := WriteRevokeRule(t.TempDir())
	if b, rerr := os.ReadFile(filepath.Join(rules, "bench.yaml")); err != nil || rerr != nil || string(b) != RevokeRule {
		t.Fatalf("revoke rule: %v %v", err, rerr)
	}
}
