package verifier

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/keymeter/keymeter/internal/bus"
)

// ErrSpoolFull: the spool has reached its size bound.
var ErrSpoolFull = errors.New("verifier: event spool full")

// spool keeps event batches on disk while the bus is unreachable, one file
// per batch named by a sequence number so that replay follows spool order.
// Files are written to a temporary name and renamed, so a crash leaves
// either a whole batch or none. They are fsynced only with the durable log
// (sync): otherwise the spool bridges bus outages, not power loss.
type spool struct {
	dir      string
	maxBytes int64
	sync     bool

	mu    sync.Mutex
	files []spoolFile // oldest first
	ids   map[string]bool
	bytes int64
	next  uint64
}

type spoolFile struct {
	seq    uint64
	size   int64
	events int
	id     string // batch id ("" if the file is unreadable)
}

const spoolExt = ".batch"

func openSpool(dir string, maxBytes int64) (*spool, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("verifier: spool: %w", err)
	}
	s := &spool{dir: dir, maxBytes: maxBytes, next: 1, ids: map[string]bool{}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("verifier: spool: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		if !strings.HasSuffix(name, spoolExt) {
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, spoolExt), 10, 64)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("verifier: spool: %w", err)
		}
		f := spoolFile{seq: seq, size: info.Size()}
		// An unreadable file does not stop the verifier: replay reports
		// and removes it.
		if m, n, err := s.read(seq); err == nil {
			f.events, f.id = n, m.BatchID
			s.ids[f.id] = true
		}
		s.files = append(s.files, f)
		s.bytes += f.size
		s.next = max(s.next, seq+1)
	}
	sort.Slice(s.files, func(i, j int) bool { return s.files[i].seq < s.files[j].seq })
	return s, nil
}

func (s *spool) path(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d%s", seq, spoolExt))
}

// A spool file is a header, the message's key, batch id and source
// (uvarint length and bytes each), then its data. The header is a zero
// byte and a uvarint of flags (spoolResent: Message.Resent) followed by
// the batch's event count; files written before the flags existed start
// with the count, never zero (a batch has events), and read as not resent.
const spoolResent = 1

// encodeSpool is the file content of batch m of n events.
func encodeSpool(m bus.Message, n int) []byte {
	var flags uint64
	if m.Resent {
		flags |= spoolResent
	}
	b := binary.AppendUvarint([]byte{0}, flags)
	b = binary.AppendUvarint(b, uint64(n))
	for _, f := range []string{m.Key, m.BatchID, m.Source} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return append(b, m.Data...)
}

// put appends a batch of n events.
func (s *spool) put(m bus.Message, n int) error {
	b := encodeSpool(m, n)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bytes+int64(len(b)) > s.maxBytes {
		return ErrSpoolFull
	}
	seq := s.next
	s.next++
	p := s.path(seq)
	if err := writeFile(p+".tmp", b, s.sync); err != nil {
		_ = os.Remove(p + ".tmp")
		return fmt.Errorf("verifier: spool write: %w", err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return fmt.Errorf("verifier: spool write: %w", err)
	}
	if s.sync {
		if err := syncDir(s.dir); err != nil {
			return err
		}
	}
	s.files = append(s.files, spoolFile{seq: seq, size: int64(len(b)), events: n, id: m.BatchID})
	s.ids[m.BatchID] = true
	s.bytes += int64(len(b))
	return nil
}

// has reports whether batch id is in the spool.
func (s *spool) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[id]
}

// first is the sequence number of the oldest batch, 0 if none.
func (s *spool) first() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.files) == 0 {
		return 0
	}
	return s.files[0].seq
}

// oldest returns the oldest batch, ok false when the spool is empty.
func (s *spool) oldest() (seq uint64, m bus.Message, n int, ok bool, err error) {
	s.mu.Lock()
	if len(s.files) == 0 {
		s.mu.Unlock()
		return 0, bus.Message{}, 0, false, nil
	}
	seq = s.files[0].seq
	s.mu.Unlock()
	m, n, err = s.read(seq)
	return seq, m, n, true, err
}

func (s *spool) read(seq uint64) (bus.Message, int, error) {
	b, err := os.ReadFile(s.path(seq))
	if err != nil {
		return bus.Message{}, 0, fmt.Errorf("verifier: spool read: %w", err)
	}
	m, n, ok := decodeSpool(b)
	if !ok {
		return bus.Message{}, 0, fmt.Errorf("verifier: spool file %s is corrupt", s.path(seq))
	}
	return m, n, nil
}

// decodeSpool reads a spool file's content (see encodeSpool).
func decodeSpool(b []byte) (m bus.Message, events int, ok bool) {
	var flags uint64
	if len(b) > 0 && b[0] == 0 {
		f, k := binary.Uvarint(b[1:])
		if k <= 0 {
			return m, 0, false
		}
		flags, b = f, b[1+k:]
	}
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return m, 0, false
	}
	b = b[k:]
	var fields [3]string
	for i := range fields {
		l, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < l {
			return m, 0, false
		}
		fields[i] = string(b[k : k+int(l)])
		b = b[k+int(l):]
	}
	m = bus.Message{Key: fields[0], BatchID: fields[1], Source: fields[2], Data: b, Resent: flags&spoolResent != 0}
	return m, int(n), true
}

// remove deletes the batch seq (the oldest, once published) and returns
// how many events it held.
func (s *spool) remove(seq uint64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	events := 0
	for i, f := range s.files {
		if f.seq == seq {
			s.files = append(s.files[:i], s.files[i+1:]...)
			s.bytes -= f.size
			events = f.events
			delete(s.ids, f.id)
			break
		}
	}
	if err := os.Remove(s.path(seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return events, fmt.Errorf("verifier: spool remove: %w", err)
	}
	return events, nil
}

// markResent sets batch seq's Resent flag in its file (fsynced with sync),
// before the replayer publishes it: should the file outlive the publish
// (a crash, a failed remove), the next start publishes it again marked.
// A file of the format without flags is left as it is (the replayer still
// marks the oldest file at start).
func (s *spool) markResent(seq uint64) error {
	f, err := os.OpenFile(s.path(seq), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("verifier: spool mark: %w", err)
	}
	defer f.Close()
	var hdr [2]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return fmt.Errorf("verifier: spool mark %s: %w", s.path(seq), err)
	}
	if hdr[0] != 0 || hdr[1]&0x80 != 0 || hdr[1]&spoolResent != 0 {
		return nil // no flags byte (the old format; flags fit in one byte), or marked already
	}
	if _, err := f.WriteAt([]byte{hdr[1] | spoolResent}, 1); err != nil {
		return fmt.Errorf("verifier: spool mark %s: %w", s.path(seq), err)
	}
	if s.sync {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("verifier: spool mark %s: %w", s.path(seq), err)
		}
	}
	return nil
}

// stats returns the number of batches, events and bytes spooled.
func (s *spool) stats() (batches, events int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.files {
		events += f.events
	}
	return len(s.files), events, s.bytes
}

func (s *spool) empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.files) == 0
}

func writeFile(path string, b []byte, sync bool) error {
	if !sync {
		return os.WriteFile(path, b, 0o640)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
