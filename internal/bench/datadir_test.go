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

func TestStoreRunModes(t *testing.T) {
	r := StoreRun{Events: 1, Batch: 1, Keys: 1, Rollups: "both"}
	if m, err := r.Modes(); err != nil || len(m) != 2 {
		t.Fatalf("both: %v %v", m, err)
	}
	r.Rollups = "x"
	if _, err := r.Modes(); err == nil || !strings.Contains(err.Error(), "--rollups") {
		t.Fatalf("bad --rollups: %v", err)
	}
	r.Rollups, r.Keys = "views", 0
	if _, err := r.Modes(); err == nil || !strings.Contains(err.Error(), "--keys") {
		t.Fatalf("no keys: %v", err)
	}
}
