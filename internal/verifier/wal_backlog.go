package verifier

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// backlogExt names a backlog file: the batches a dead run's log held that
// did not fit in the spool at the next start. A verifier must be able to
// start whatever its spool holds, so recovery moves what fits and writes
// the rest, in the log's own format (each batch's events and its seal,
// under its own id), to <N>.backlog, which replaces every log file
// numbered up to N; the emitter moves its batches into the spool as the
// spool drains, appending a done record for each, and deletes the file
// once it is empty. A later recovery reads the newest backlog (its done
// records leave out what was moved), then the log segments after it, and
// skips batches the spool already holds: nothing is spooled twice.
const backlogExt = ".backlog"

// backlog is the batches of a recovered log waiting for room in the spool.
type backlog struct {
	mu      sync.Mutex
	path    string   // the backlog file; "" if it could not be written
	f       *os.File // path, for appending done records
	batches []walBatch
	keep    []string // without a backlog file: the dead run's files, deleted once empty
	events  int
}

// saveBacklog writes batches to dir's backlog file number num (replacing
// any file of that name; write, fsync, rename) and returns the backlog.
func saveBacklog(dir string, num uint64, batches []walBatch) (*backlog, error) {
	bl := &backlog{batches: batches}
	for _, b := range batches {
		bl.events += len(b.events)
	}
	if len(batches) == 0 {
		return bl, nil
	}
	w := &wal{}
	var scratch []byte
	for _, b := range batches {
		for i := range b.events {
			scratch = w.eventLocked(0, &b.events[i], scratch)
		}
		w.sealLocked(0, len(b.events), b.id)
	}
	path := filepath.Join(dir, fmt.Sprintf("%020d%s", num, backlogExt))
	if err := writeFile(path+".tmp", w.buf, true); err != nil {
		_ = os.Remove(path + ".tmp")
		return nil, fmt.Errorf("verifier: durable log backlog: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return nil, fmt.Errorf("verifier: durable log backlog: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, fmt.Errorf("verifier: durable log backlog: %w", err)
	}
	bl.path, bl.f = path, f
	return bl, nil
}

// len is how many batches and events wait.
func (bl *backlog) len() (batches, events int) {
	if bl == nil {
		return 0, 0
	}
	bl.mu.Lock()
	defer bl.mu.Unlock()
	return len(bl.batches), bl.events
}

// front is the oldest batch waiting.
func (bl *backlog) front() (walBatch, bool) {
	bl.mu.Lock()
	defer bl.mu.Unlock()
	if len(bl.batches) == 0 {
		return walBatch{}, false
	}
	return bl.batches[0], true
}

// pop records that the oldest batch is in the spool or published: a done
// record, not fsynced (after a power failure the next start finds the
// batch in the spool and skips it, or publishes it again marked Resent).
// Once the backlog is empty its files are deleted; it reports whether
// that happened.
func (bl *backlog) pop() (emptied bool, err error) {
	bl.mu.Lock()
	defer bl.mu.Unlock()
	b := bl.batches[0]
	bl.batches = bl.batches[1:]
	bl.events -= len(b.events)
	if len(bl.batches) > 0 {
		if bl.f == nil {
			return false, nil
		}
		w := &wal{}
		w.appendRecord(walDone, []byte(b.id))
		if _, err := bl.f.Write(w.buf); err != nil {
			return false, fmt.Errorf("verifier: durable log backlog: %w", err)
		}
		return false, nil
	}
	bl.closeLocked()
	for _, p := range append(bl.keep, bl.path) {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return true, fmt.Errorf("verifier: durable log backlog: %w", err)
		}
	}
	return true, nil
}

func (bl *backlog) close() {
	if bl == nil {
		return
	}
	bl.mu.Lock()
	defer bl.mu.Unlock()
	bl.closeLocked()
}

func (bl *backlog) closeLocked() {
	if bl.f != nil {
		_ = bl.f.Close()
		bl.f = nil
	}
}
