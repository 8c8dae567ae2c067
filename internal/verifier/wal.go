package verifier

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/keymeter/keymeter/internal/event"
)

// wal is the emitter's durable event log (EmitterConfig.DurableLog): every
// event is appended, and written and fsynced as part of a group commit,
// before Emit returns, so before the request is answered. Batch boundaries
// are recorded too ("seal": partition, event count, batch id; fsynced
// before the batch is published) and so are acknowledged batches ("done",
// written without fsync). A run that died is replayed on the next start:
// every sealed batch not marked done is published again under its own id
// (the bus and the aggregator drop a batch id they already have), and the
// events after a partition's last seal form one batch whose id derives from
// its first event's id, so a second replay of the same log forms it again.
//
// The log is split into segments; a segment is deleted once every event in
// it is acknowledged by the bus or in the (then fsynced) spool.
type wal struct {
	dir      string
	segBytes int64

	mu      sync.Mutex
	f       *os.File
	buf     []byte // appended, not yet written
	dirty   bool   // written, not yet fsynced
	size    int64  // of the current segment
	segs    []walSeg
	nextSeg uint64
	open    map[string]uint64 // sealed batch id → its first event seq, until done
	failed  error
}

type walSeg struct {
	num      uint64
	firstSeq uint64 // seq of the first event appended to it
}

const (
	walEvent = 'E'
	walSeal  = 'S'
	walDone  = 'D'
	walExt   = ".wal"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// walBatch is a batch recovered from a log.
type walBatch struct {
	id     string
	events []event.Event
}

// recoverWAL reads the segments a previous run left in dir and returns the
// batches to publish again, in log order, and the segment files read.
func recoverWAL(dir string) (batches []walBatch, files []string, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("verifier: durable log: %w", err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), walExt) {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(files) // zero-padded segment numbers
	r := walRecovery{parts: map[uint64][]event.Event{}, done: map[string]bool{}}
	for _, path := range files {
		if err := r.readSegment(path); err != nil {
			return nil, nil, err
		}
	}
	return r.batches(), files, nil
}

// walRecovery is what recoverWAL has read so far.
type walRecovery struct {
	parts  map[uint64][]event.Event // events not yet sealed, per partition
	porder []uint64                 // the partitions of parts in log order
	sealed []walBatch
	done   map[string]bool // ids of batches published
}

// readSegment reads the records of the segment file path, up to a torn or
// corrupt tail.
func (r *walRecovery) readSegment(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("verifier: durable log: %w", err)
	}
	for len(b) > 0 {
		if len(b) < 8 {
			break // torn tail
		}
		n := binary.LittleEndian.Uint32(b)
		sum := binary.LittleEndian.Uint32(b[4:])
		if n == 0 || uint64(len(b)-8) < uint64(n) || crc32.Checksum(b[8:8+n], crcTable) != sum {
			break // torn or corrupt tail: nothing after it was acknowledged to a client
		}
		rec := b[8 : 8+n]
		b = b[8+n:]
		if err := r.record(rec[0], rec[1:]); err != nil {
			return fmt.Errorf("verifier: durable log %s: %w", path, err)
		}
	}
	return nil
}

// record takes one record of type typ.
func (r *walRecovery) record(typ byte, body []byte) error {
	switch typ {
	case walEvent:
		p, k := binary.Uvarint(body)
		if k <= 0 {
			return errors.New("bad event record")
		}
		var ev event.Event
		if err := event.DecodeEvent(body[k:], &ev); err != nil {
			return err
		}
		ev.ID = strings.Clone(ev.ID)
		if _, ok := r.parts[p]; !ok {
			r.porder = append(r.porder, p)
		}
		r.parts[p] = append(r.parts[p], ev)
	case walSeal:
		p, k := binary.Uvarint(body)
		if k <= 0 {
			return errors.New("bad seal record")
		}
		cnt, k2 := binary.Uvarint(body[k:])
		if k2 <= 0 {
			return errors.New("bad seal record")
		}
		id := string(body[k+k2:])
		var evs []event.Event
		if pending, ok := r.parts[p]; ok {
			// Fewer events than sealed: the older ones were in a
			// deleted segment, so the batch was acknowledged.
			take := min(int(cnt), len(pending))
			evs = pending[:take:take]
			r.parts[p] = pending[take:]
		}
		r.sealed = append(r.sealed, walBatch{id: id, events: evs})
	case walDone:
		r.done[string(body)] = true
	default:
		return fmt.Errorf("unknown record type %d", typ)
	}
	return nil
}

// batches are the batches to publish again: those sealed and not done, in
// log order, then per partition the events never sealed.
func (r *walRecovery) batches() []walBatch {
	var batches []walBatch
	for _, s := range r.sealed {
		if !r.done[s.id] && len(s.events) > 0 {
			batches = append(batches, s)
		}
	}
	for _, p := range r.porder {
		if evs := r.parts[p]; len(evs) > 0 {
			batches = append(batches, walBatch{id: evs[0].ID + ".t", events: evs})
		}
	}
	return batches
}

// openWAL starts a new log in dir, after the segments recoverWAL read
// (which the caller deletes once their batches are safe).
func openWAL(dir string, segBytes int64, firstSeq uint64) (*wal, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("verifier: durable log: %w", err)
	}
	w := &wal{dir: dir, segBytes: segBytes, open: map[string]uint64{}, nextSeg: 1}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if n, err := strconv.ParseUint(strings.TrimSuffix(e.Name(), walExt), 10, 64); err == nil && strings.HasSuffix(e.Name(), walExt) {
			w.nextSeg = max(w.nextSeg, n+1)
		}
	}
	if err := w.rotate(firstSeq); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *wal) segPath(n uint64) string {
	return filepath.Join(w.dir, fmt.Sprintf("%020d%s", n, walExt))
}

// rotate starts a new segment whose first event will be firstSeq; mu held
// (or not yet shared).
func (w *wal) rotate(firstSeq uint64) error {
	if w.f != nil {
		if err := w.writeLocked(true); err != nil {
			return err
		}
		_ = w.f.Close()
	}
	n := w.nextSeg
	w.nextSeg++
	f, err := os.OpenFile(w.segPath(n), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("verifier: durable log: %w", err)
	}
	if err := syncDir(w.dir); err != nil {
		_ = f.Close()
		return err
	}
	w.f, w.size = f, 0
	w.segs = append(w.segs, walSeg{num: n, firstSeq: firstSeq})
	return nil
}

func (w *wal) appendRecord(typ byte, parts ...[]byte) {
	start := len(w.buf)
	w.buf = append(w.buf, 0, 0, 0, 0, 0, 0, 0, 0, typ)
	for _, p := range parts {
		w.buf = append(w.buf, p...)
	}
	rec := w.buf[start+8:]
	binary.LittleEndian.PutUint32(w.buf[start:], uint32(len(rec)))
	binary.LittleEndian.PutUint32(w.buf[start+4:], crc32.Checksum(rec, crcTable))
}

// event appends an event of partition p (the collector only).
func (w *wal) event(p int, ev *event.Event, scratch []byte) []byte {
	scratch = binary.AppendUvarint(scratch[:0], uint64(p))
	scratch = event.AppendEvent(scratch, ev)
	w.mu.Lock()
	w.appendRecord(walEvent, scratch)
	w.mu.Unlock()
	return scratch
}

// seal records that the last n unsealed events of partition p form batch
// id, whose first event is firstSeq. Publish only after the next commit.
func (w *wal) seal(p, n int, id string, firstSeq uint64) {
	var hdr [20]byte
	b := binary.AppendUvarint(hdr[:0], uint64(p))
	b = binary.AppendUvarint(b, uint64(n))
	w.mu.Lock()
	w.appendRecord(walSeal, b, []byte(id))
	w.open[id] = firstSeq
	w.mu.Unlock()
}

// done records that batch id is acknowledged by the bus or spooled. It is
// written at once (a process crash keeps it) but not fsynced: losing it
// only means the batch is published again, and deduplicated by its id.
func (w *wal) done(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.open[id]; !ok {
		return
	}
	delete(w.open, id)
	w.appendRecord(walDone, []byte(id))
	_ = w.writeLocked(false)
}

// commit writes what is appended and fsyncs it: the group commit.
func (w *wal) commit() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writeLocked(true)
}

func (w *wal) writeLocked(sync bool) error {
	if w.failed != nil {
		w.buf = w.buf[:0]
		return w.failed
	}
	if len(w.buf) > 0 {
		n, err := w.f.Write(w.buf)
		w.size += int64(n)
		w.buf = w.buf[:0]
		if err != nil {
			w.failed = fmt.Errorf("verifier: durable log write: %w", err)
			return w.failed
		}
		w.dirty = true
	}
	if sync && w.dirty {
		if err := w.f.Sync(); err != nil {
			w.failed = fmt.Errorf("verifier: durable log fsync: %w", err)
			return w.failed
		}
		w.dirty = false
	}
	return nil
}

// trim rotates a full segment and deletes the segments whose events are
// all below low, the lowest seq not yet acknowledged or spooled (the
// collector only; low accounts for its unsealed events).
func (w *wal) trim(low, nextSeq uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, first := range w.open {
		low = min(low, first)
	}
	if w.size >= w.segBytes {
		if err := w.rotate(nextSeq); err != nil {
			return err
		}
	}
	for len(w.segs) > 1 && w.segs[1].firstSeq <= low {
		if err := os.Remove(w.segPath(w.segs[0].num)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("verifier: durable log: %w", err)
		}
		w.segs = w.segs[1:]
	}
	return nil
}

// openBatches is how many sealed batches await their ack.
func (w *wal) openBatches() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.open)
}

// close writes what is buffered; with nothing left open it removes the
// log, otherwise the next run replays it.
func (w *wal) close(empty bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.writeLocked(true)
	_ = w.f.Close()
	if err == nil && empty && len(w.open) == 0 {
		for _, s := range w.segs {
			_ = os.Remove(w.segPath(s.num))
		}
		w.segs = nil
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("verifier: durable log: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("verifier: durable log: fsync %s: %w", dir, err)
	}
	return nil
}
