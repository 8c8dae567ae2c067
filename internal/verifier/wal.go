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
// segment holding again everything not acknowledged: a "reopen" record,
// every sealed batch not yet done (sealed and published while the log was
// failed included: the log keeps each open batch's encoded message for
// this), the collector's unsealed events, fsynced, then a "reset" record,
// fsynced. Recovery reads a reopen block (reopen record to reset record)
// apart, and only once its reset record is read does the block replace
// what this run (the event and batch id prefix the reset names) wrote
// before; a block without its reset (a crash or power loss while it was
// written: reopen never returned) is ignored, and what the earlier
// segments hold stays valid. Once the reset is fsynced the earlier
// segments of this run are deleted. See collector.commit.
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
	open    map[string]openBatch // sealed batch id → the batch, until done
	sealN   uint64               // seals so far: the order of open batches
	failed  error                // set by a write error, cleared by reopen
	booted  bool                 // this run's boot record is written
	errs    uint64               // write, fsync and reopen errors since start
	first   error                // the first of them
}

// openBatch is a sealed batch not yet done, kept for reopen.
type openBatch struct {
	p        int
	order    uint64
	firstSeq uint64
	data     []byte // the batch's encoded message (event.AppendBatch)
}

type walSeg struct {
	num      uint64
	firstSeq uint64 // seq of the first event appended to it
}

const (
	walEvent  = 'E'
	walSeal   = 'S'
	walDone   = 'D'
	walBoot   = 'B' // a run starts: earlier unsealed events form batches of their own
	walReopen = 'O' // a reopen block starts (see wal)
	walReset  = 'R' // the reopen block ends: it replaces what the run (prefix) wrote before
	walExt    = ".wal"
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
		if strings.HasSuffix(e.Name(), ".tmp") {
			// A backlog whose writing a crash interrupted
			// (saveBacklog): the files it would replace are there.
			_ = os.Remove(filepath.Join(dir, e.Name()))
			continue
		}
		if n, ext, ok := walFileNum(e.Name()); ok {
			rec.files = append(rec.files, filepath.Join(dir, e.Name()))
			rec.last = max(rec.last, n)
			if ext == backlogExt {
				backlog = max(backlog, n)
			}
		}
	}
	sort.Strings(rec.files) // zero-padded numbers
	r := newWALRecovery()
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
	walState
	block *walState       // the reopen block being read, nil outside one
	done  map[string]bool // ids of batches published
}

// walState is the unsealed events and sealed batches read so far.
type walState struct {
	parts  map[uint64][]event.Event // events not yet sealed, per partition
	porder []uint64                 // the partitions of parts in log order
	sealed []walBatch
}

func newWALRecovery() *walRecovery {
	return &walRecovery{walState: walState{parts: map[uint64][]event.Event{}}, done: map[string]bool{}}
}

// readSegment reads the records of the segment file path, up to a torn or
// corrupt tail. A reopen block still open at its end was torn: ignored.
func (r *walRecovery) readSegment(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("verifier: durable log: %w", err)
	}
	defer func() { r.block = nil }()
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
	st := &r.walState
	if r.block != nil {
		st = r.block
	}
	switch typ {
	case walEvent:
		return st.event(body)
	case walSeal:
		return st.seal(body)
	case walDone:
		r.done[string(body)] = true
	case walBoot:
		// An earlier run's unsealed events: a batch per partition, as
		// at the end of the log.
		st.boot("")
	case walReopen:
		r.block = &walState{parts: map[uint64][]event.Event{}} // a torn one before is dropped
	case walReset:
		if r.block == nil {
			// The format of a first version: the unsealed events
			// follow again after this record.
			clear(st.parts)
			st.porder = st.porder[:0]
			return nil
		}
		r.replace(string(body))
	default:
		return fmt.Errorf("unknown record type %d", typ)
	}
	return nil
}

func (st *walState) event(body []byte) error {
	p, k := binary.Uvarint(body)
	if k <= 0 {
		return errors.New("bad event record")
	}
	var ev event.Event
	if err := event.DecodeEvent(body[k:], &ev); err != nil {
		return err
	}
	ev.ID = strings.Clone(ev.ID)
	if _, ok := st.parts[p]; !ok {
		st.porder = append(st.porder, p)
	}
	st.parts[p] = append(st.parts[p], ev)
	return nil
}

func (st *walState) seal(body []byte) error {
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
	if pending, ok := st.parts[p]; ok {
		// Fewer events than sealed: the older ones were in a
		// deleted segment, so the batch was acknowledged.
		take := min(int(cnt), len(pending))
		evs = pending[:take:take]
		st.parts[p] = pending[take:]
	}
	st.sealed = append(st.sealed, walBatch{id: id, events: evs})
	return nil
}

// boot makes the unsealed events not of prefix ("": all) batches of their
// own and drops the others.
func (st *walState) boot(prefix string) {
	for _, p := range st.porder {
		keep := st.parts[p]
		if prefix != "" {
			keep = nil
			for _, ev := range st.parts[p] {
				if !strings.HasPrefix(ev.ID, prefix) {
					keep = append(keep, ev)
				}
			}
		}
		if len(keep) > 0 {
			st.sealed = append(st.sealed, walBatch{id: keep[0].ID + ".t", events: keep})
		}
	}
	clear(st.parts)
	st.porder = st.porder[:0]
}

// replace ends a reopen block, which holds everything of the run whose
// ids start with prefix not yet acknowledged when it was written: it
// replaces what that run wrote before.
func (r *walRecovery) replace(prefix string) {
	r.boot(prefix) // an earlier run's unsealed events (its boot record was trimmed) stay
	kept := r.sealed[:0]
	for _, b := range r.sealed {
		if prefix == "" || !strings.HasPrefix(b.id, prefix) {
			kept = append(kept, b)
		}
	}
	r.sealed = append(kept, r.block.sealed...)
	r.parts, r.porder = r.block.parts, r.block.porder
	r.block = nil
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
func (st *walState) unsealed() []walBatch {
	var bs []walBatch
	for _, p := range st.porder {
		if evs := st.parts[p]; len(evs) > 0 {
			bs = append(bs, walBatch{id: evs[0].ID + ".t", events: evs})
		}
	}
	return bs
}

// openWAL starts a new log in dir, after the files recoverWAL read (which
// the caller deletes once their batches are safe), with a boot record. On
// error it returns the log failed (see reopen), never nil.
func openWAL(dir string, segBytes int64, firstSeq uint64) (*wal, error) {
	w := &wal{dir: dir, segBytes: segBytes, open: map[string]openBatch{}, nextSeg: 1}
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

// reopen leaves a failed segment for a new one, whose first new event will
// be nextSeq. It writes into it a reopen block: every open batch (sealed,
// not yet done) and the unsealed events per partition (parts), fsynced,
// then the reset record naming this run's id prefix, fsynced; then it
// deletes this run's earlier segments, which the block replaces. On error
// the log stays failed and the new segment is removed.
func (w *wal) reopen(nextSeq uint64, prefix string, parts [][]event.Event) error {
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
	if !w.booted {
		w.appendRecord(walBoot) // earlier runs' unsealed events are not ours to drop
	}
	w.appendRecord(walReopen)
	scratch, err := w.relogOpen(nil)
	for p, evs := range parts {
		for i := range evs {
			scratch = w.eventLocked(p, &evs[i], scratch)
		}
	}
	if err == nil {
		// Durable before the reset: a block torn before its reset is
		// ignored, never one holding only part of what it replaces.
		err = w.writeLocked(true)
	}
	if err == nil {
		w.appendRecord(walReset, []byte(prefix))
		err = w.writeLocked(true)
	}
	if err != nil {
		_ = w.f.Close()
		w.f = nil
		last := w.segs[len(w.segs)-1]
		_ = os.Remove(w.segPath(last.num))
		w.segs = w.segs[:len(w.segs)-1]
		if w.failed == nil {
			_ = w.fail(err)
		}
		return err
	}
	w.booted = true
	w.dropReplaced()
	return nil
}

// relogOpen appends every open batch, in seal order: its events and its
// seal; mu held.
func (w *wal) relogOpen(scratch []byte) ([]byte, error) {
	ids := make([]string, 0, len(w.open))
	for id := range w.open {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return w.open[ids[i]].order < w.open[ids[j]].order })
	var b event.Batch
	for _, id := range ids {
		ob := w.open[id]
		if err := event.DecodeBatch(ob.data, &b); err != nil {
			return scratch, fmt.Errorf("verifier: durable log: batch %s: %w", id, err) // impossible: we encoded it
		}
		for i := range b.Events {
			scratch = w.eventLocked(ob.p, &b.Events[i], scratch)
		}
		w.sealLocked(ob.p, len(b.Events), id)
	}
	return scratch, nil
}

// dropReplaced deletes the segments before the current one, which a
// reopen block just replaced; one that cannot be deleted is left to trim.
func (w *wal) dropReplaced() {
	cur := w.segs[len(w.segs)-1]
	kept := w.segs[:0]
	for _, s := range w.segs[:len(w.segs)-1] {
		if err := os.Remove(w.segPath(s.num)); err != nil && !errors.Is(err, os.ErrNotExist) {
			kept = append(kept, s)
		}
	}
	w.segs = append(kept, cur)
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
// batch id, whose first event is firstSeq and whose encoded message is
// data (kept until done, for reopen: not modified). Publish only after
// the next commit.
func (w *wal) seal(p, n int, id string, firstSeq uint64, data []byte) {
	w.mu.Lock()
	w.sealLocked(p, n, id)
	w.sealN++
	w.open[id] = openBatch{p: p, order: w.sealN, firstSeq: firstSeq, data: data}
	w.mu.Unlock()
}

func (w *wal) sealLocked(p, n int, id string) {
	var hdr [20]byte
	b := binary.AppendUvarint(hdr[:0], uint64(p))
	b = binary.AppendUvarint(b, uint64(n))
	w.appendRecord(walSeal, b, []byte(id))
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
	for _, ob := range w.open {
		low = min(low, ob.firstSeq)
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
