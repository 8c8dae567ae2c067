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
// written without fsync: a power failure that loses one only makes the next
// start publish that batch again, marked Resent, and downstream drops its
// events by event id). A run that died is replayed on the next start:
// every sealed batch not marked done is published again under its own id
// (the bus and the aggregator drop a batch id they already have), and the
// events after a partition's last seal form one batch whose id derives from
// its first event's id, so a second replay of the same log forms it again.
//
// The log is split into segments; a segment is deleted once every event in
// it is acknowledged by the bus or in the (then fsynced) spool. Each run
// starts its log with a "boot" record: events of an earlier run still
// unsealed there form their own batches and are never mixed with this
// run's.
//
// A write or fsync error makes the segment unusable (after a failed fsync
// the kernel may have dropped the pages). The log is then "failed": appends
// are discarded and commits report the error, until reopen starts a new
// segment with a "reset" record and writes into it again every event not
// yet published (the collector's unsealed events and sealed batches not
// yet sent). Recovery drops the unsealed events it holds at a reset record,
// since they follow it again; the failed segment is deleted like any other
// once what it holds is acknowledged. See collector.commit.
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
	failed  error             // set by a write error, cleared by reopen
	booted  bool              // this run's boot record is written
	errs    uint64            // write, fsync and reopen errors since start
	first   error             // the first of them
}

type walSeg struct {
	num      uint64
	firstSeq uint64 // seq of the first event appended to it
}

const (
	walEvent = 'E'
	walSeal  = 'S'
	walDone  = 'D'
	walBoot  = 'B' // a run starts: earlier unsealed events form batches of their own
	walReset = 'R' // a failed segment was left: earlier unsealed events follow again
	walExt   = ".wal"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// walBatch is a batch recovered from a log.
type walBatch struct {
	id     string
	events []event.Event
}

// walRecovered is what recoverWAL found in a log directory.
type walRecovered struct {
	batches []walBatch // to publish again, in log order
	files   []string   // every log and backlog file, to delete once the batches are safe
	last    uint64     // the highest file number
}

// recoverWAL reads the segments previous runs left in dir (the newest
// backlog, see backlog.go, and the segments after it) and returns the
// batches to publish again.
func recoverWAL(dir string) (walRecovered, error) {
	var rec walRecovered
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return rec, nil
		}
		return rec, fmt.Errorf("verifier: durable log: %w", err)
	}
	var backlog uint64 // number of the newest backlog, which replaces every file up to it
	for _, e := range ents {
		if n, ext, ok := walFileNum(e.Name()); ok {
			rec.files = append(rec.files, filepath.Join(dir, e.Name()))
			rec.last = max(rec.last, n)
			if ext == backlogExt {
				backlog = max(backlog, n)
			}
		}
	}
	sort.Strings(rec.files) // zero-padded numbers
	r := walRecovery{parts: map[uint64][]event.Event{}, done: map[string]bool{}}
	if backlog > 0 {
		if err := r.readSegment(filepath.Join(dir, fmt.Sprintf("%020d%s", backlog, backlogExt))); err != nil {
			return rec, err
		}
	}
	for _, path := range rec.files {
		if n, ext, _ := walFileNum(filepath.Base(path)); ext == walExt && n > backlog {
			if err := r.readSegment(path); err != nil {
				return rec, err
			}
		}
	}
	rec.batches = r.batches()
	return rec, nil
}

// walFileNum parses a log or backlog file name.
func walFileNum(name string) (n uint64, ext string, ok bool) {
	for _, ext := range []string{walExt, backlogExt} {
		if base, found := strings.CutSuffix(name, ext); found {
			n, err := strconv.ParseUint(base, 10, 64)
			return n, ext, err == nil
		}
	}
	return 0, "", false
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
	case walBoot:
		// An earlier run's unsealed events: a batch per partition, as
		// at the end of the log.
		r.sealed = append(r.sealed, r.unsealed()...)
		clear(r.parts)
		r.porder = r.porder[:0]
	case walReset:
		clear(r.parts) // written again after this record
		r.porder = r.porder[:0]
	default:
		return fmt.Errorf("unknown record type %d", typ)
	}
	return nil
}

// batches are the batches to publish again: those sealed and not done, in
// log order, then per partition the events never sealed.
func (r *walRecovery) batches() []walBatch {
	var batches []walBatch
	for _, s := range append(r.sealed, r.unsealed()...) {
		if !r.done[s.id] && len(s.events) > 0 {
			batches = append(batches, s)
		}
	}
	return batches
}

// unsealed is a batch per partition of the events not sealed, whose id
// derives from its first event's, so that every recovery of the same log
// forms it again under the same id.
func (r *walRecovery) unsealed() []walBatch {
	var bs []walBatch
	for _, p := range r.porder {
		if evs := r.parts[p]; len(evs) > 0 {
			bs = append(bs, walBatch{id: evs[0].ID + ".t", events: evs})
		}
	}
	return bs
}

// openWAL starts a new log in dir, after the files recoverWAL read (which
// the caller deletes once their batches are safe), with a boot record. On
// error it returns the log failed (see reopen), never nil.
func openWAL(dir string, segBytes int64, firstSeq uint64) (*wal, error) {
	w := &wal{dir: dir, segBytes: segBytes, open: map[string]uint64{}, nextSeg: 1}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return w, w.fail(fmt.Errorf("verifier: durable log: %w", err))
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if n, _, ok := walFileNum(e.Name()); ok {
			w.nextSeg = max(w.nextSeg, n+1)
		}
	}
	if err := w.rotate(firstSeq); err != nil {
		return w, err
	}
	w.appendRecord(walBoot)
	if err := w.writeLocked(true); err != nil {
		return w, err
	}
	w.booted = true
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
		w.f = nil
	}
	n := w.nextSeg
	w.nextSeg++
	f, err := os.OpenFile(w.segPath(n), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o640)
	if err == nil {
		if err = syncDir(w.dir); err != nil {
			_ = f.Close()
			_ = os.Remove(w.segPath(n))
		}
	}
	if err != nil {
		return w.fail(fmt.Errorf("verifier: durable log: new segment: %w", err))
	}
	w.f, w.size = f, 0
	w.segs = append(w.segs, walSeg{num: n, firstSeq: firstSeq})
	return nil
}

// fail puts the log in the failed state; mu held.
func (w *wal) fail(err error) error {
	w.failed = err
	w.errs++
	if w.first == nil {
		w.first = err
	}
	return err
}

// relogBatch is a sealed batch not yet published, for reopen.
type relogBatch struct {
	p        int
	id       string
	firstSeq uint64
	events   []event.Event
}

// reopen leaves a failed segment for a new one, whose first new event will
// be nextSeq, and writes into it, after a reset record, the sealed batches
// not yet published and the unsealed events per partition (parts). On
// error the log stays failed and the new segment is removed.
func (w *wal) reopen(nextSeq uint64, sealed []relogBatch, parts [][]event.Event) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil {
		_ = w.f.Close() // its errors are the ones that brought us here
		w.f = nil
	}
	w.failed, w.buf = nil, w.buf[:0]
	if err := w.rotate(nextSeq); err != nil {
		return err
	}
	if w.booted {
		w.appendRecord(walReset)
	} else {
		w.appendRecord(walBoot) // earlier runs' unsealed events are not ours to drop
	}
	var scratch []byte
	for _, b := range sealed {
		for i := range b.events {
			scratch = w.eventLocked(b.p, &b.events[i], scratch)
		}
		w.sealLocked(b.p, len(b.events), b.id, b.firstSeq)
	}
	for p, evs := range parts {
		for i := range evs {
			scratch = w.eventLocked(p, &evs[i], scratch)
		}
	}
	if err := w.writeLocked(true); err != nil {
		_ = w.f.Close()
		w.f = nil
		last := w.segs[len(w.segs)-1]
		_ = os.Remove(w.segPath(last.num))
		w.segs = w.segs[:len(w.segs)-1]
		return err
	}
	w.booted = true
	return nil
}

// health is the log's current failure (nil if it works), how many errors
// it had since start and the first of them.
func (w *wal) health() (failed error, errs uint64, first error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failed, w.errs, w.first
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
	w.mu.Lock()
	scratch = w.eventLocked(p, ev, scratch)
	w.mu.Unlock()
	return scratch
}

func (w *wal) eventLocked(p int, ev *event.Event, scratch []byte) []byte {
	scratch = binary.AppendUvarint(scratch[:0], uint64(p))
	scratch = event.AppendEvent(scratch, ev)
	w.appendRecord(walEvent, scratch)
	return scratch
}

// seal records that the oldest n unsealed events of partition p form
// batch id, whose first event is firstSeq. Publish only after the next
// commit.
func (w *wal) seal(p, n int, id string, firstSeq uint64) {
	w.mu.Lock()
	w.sealLocked(p, n, id, firstSeq)
	w.mu.Unlock()
}

func (w *wal) sealLocked(p, n int, id string, firstSeq uint64) {
	var hdr [20]byte
	b := binary.AppendUvarint(hdr[:0], uint64(p))
	b = binary.AppendUvarint(b, uint64(n))
	w.appendRecord(walSeal, b, []byte(id))
	w.open[id] = firstSeq
}

// done records that batch id is acknowledged by the bus or spooled. It is
// written at once (a process crash keeps it) but not fsynced: losing it (a
// power failure, or a write error before the next reopen) only means the
// next start publishes the batch again, marked Resent, with the same event
// ids: the bus drops it by batch id within its duplicate window, the
// aggregator by event id after that.
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
			return w.fail(fmt.Errorf("verifier: durable log write: %w", err))
		}
		w.dirty = true
	}
	if sync && w.dirty {
		if err := w.f.Sync(); err != nil {
			return w.fail(fmt.Errorf("verifier: durable log fsync: %w", err))
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
	if w.failed != nil {
		return nil // reported already; reopen comes first
	}
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
// log (even a failed one: everything in it is acknowledged or spooled),
// otherwise the next run replays it.
func (w *wal) close(empty bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var err error
	if w.f != nil {
		err = w.writeLocked(true)
		_ = w.f.Close()
		w.f = nil
	} else {
		err = w.failed
	}
	if empty && len(w.open) == 0 {
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
