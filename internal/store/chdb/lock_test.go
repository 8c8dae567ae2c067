package chdb_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/keymeter/keymeter/internal/store/chdb"
)

// TestSecondProcessGetsLockError: a second process on the same data
// directory gets ErrLocked with a message that says what to do.
func TestSecondProcessGetsLockError(t *testing.T) {
	if dir := os.Getenv("KEYMETER_TEST_LOCK_DIR"); dir != "" {
		_, err := chdb.Open(chdb.Config{DataDir: dir})
		if !errors.Is(err, chdb.ErrLocked) {
			t.Fatalf("second process: err = %v, want ErrLocked", err)
		}
		os.Stdout.WriteString("LOCKED: " + err.Error() + "\n")
		return
	}
	db := open(t, "lock_test")
	defer db.Close(context.Background())
	cmd := exec.Command(os.Args[0], "-test.run=^TestSecondProcessGetsLockError$", "-test.v")
	cmd.Env = append(os.Environ(), "KEYMETER_TEST_LOCK_DIR="+dataDir)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "LOCKED: ") || !strings.Contains(string(out), "another process") {
		t.Fatalf("second process: %v\n%s", err, out)
	}
}
