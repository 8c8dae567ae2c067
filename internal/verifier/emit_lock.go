package verifier

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockName is the file in a verifier's data directory that its emitter
// holds an exclusive flock on while it runs: a second process on the same
// directory would take the first one's live durable log for a dead run's
// and publish its events again.
const lockName = "verifier.lock"

// lockDataDir takes the data directory's lock, failing at once if another
// process (or another emitter of this one) holds it. The kernel drops the
// lock when the process dies, so a SIGKILL leaves nothing to clean up.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("verifier: data directory: %w", err)
	}
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("verifier: data directory lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("verifier: data directory %s is in use by another keymeter process (lock %s held); give each verifier its own --data-dir", dir, path)
		}
		return nil, fmt.Errorf("verifier: data directory lock %s: %w", path, err)
	}
	return f, nil
}

// unlockDataDir releases the lock (closing the file drops the flock).
func unlockDataDir(f *os.File) {
	if f != nil {
		_ = f.Close()
	}
}
