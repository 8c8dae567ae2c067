package verifier

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// failLog swaps the durable log's segment for /dev/full: the next write
// fails with ENOSPC, as on a full disk.
func failLog(t *testing.T, em *Emitter) {
	t.Helper()
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	em.wal.mu.Lock()
	seg := em.wal.f
	em.wal.f = full
	em.wal.mu.Unlock()
	_ = seg.Close()
}

func walFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if filepath.Ext(e.Name()) == walExt {
			names = append(names, e.Name())
		}
	}
	return names
}

// TestReopenKeepsPublishedUnacked (second review, finding 1): 5 events
// committed, then the log fails and stays failed (no segment can be
// made); 5 more seal a batch of 10 that is published and never
// acknowledged; once the log reopens, a crash must give back all 10 (and
// what came after), each once and marked Resent: the reopen writes again
// the batches published while the log was failed. The old code recovered
// 1 of them.
func TestReopenKeepsPublishedUnacked(t *testing.T) {
	live := t.TempDir()
	stuck := &stuckPub{}
	em, err := NewEmitter(EmitterConfig{Publisher: stuck, Producer: "vre", DataDir: live, DurableLog: true,
		MaxBatch: 10, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer closeQuick(em)
	emitN(t, em, "key_a", 5) // committed while the log works
	logDir := filepath.Join(live, "log")
	if err := os.Rename(logDir, logDir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logDir, nil, 0o640); err != nil { // no segment can be made: reopen fails
		t.Fatal(err)
	}
	failLog(t, em)
	emitN(t, em, "key_a", 5) // commit and reopen fail; the batch of 10 is sealed and sent, never acked
	if em.LogHealth() == nil {
		t.Fatal("log not failed")
	}
	// Emit returns once the commit was tried; the collector publishes the
	// sealed batch just after.
	for deadline := time.Now().Add(10 * time.Second); len(stuck.eventIDs()) < 10 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if len(stuck.eventIDs()) != 10 {
		t.Fatalf("%d events published, want the batch of 10", len(stuck.eventIDs()))
	}
	_ = os.Remove(logDir)
	if err := os.Rename(logDir+".away", logDir); err != nil {
		t.Fatal(err)
	}
	extra := 0
	for deadline := time.Now().Add(30 * time.Second); em.LogHealth() != nil && time.Now().Before(deadline); extra++ {
		time.Sleep(300 * time.Millisecond) // reopen is retried at most once a second
		emitN(t, em, "key_a", 1)
	}
	if err := em.LogHealth(); err != nil {
		t.Fatalf("not reopened: %v", err)
	}
	if files := walFiles(t, logDir); len(files) != 1 {
		t.Errorf("log segments after the reopen: %v, want only the new one", files)
	}
	crashed := crashCopy(t, live) // SIGKILL now
	published := stuck.eventIDs()
	pub := &ackPub{}
	em2, err := NewEmitter(EmitterConfig{Publisher: pub, Producer: "vre", DataDir: crashed, DurableLog: true})
	if err != nil {
		t.Fatal(err)
	}
	got := em2.Stats().Recovered
	if err := em2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := uint64(10 + extra); got != want || len(pub.times) != int(want) {
		t.Errorf("recovered %d events, replayed %d distinct; want %d", got, len(pub.times), want)
	}
	for id := range published {
		if pub.times[id] != 1 || !pub.resent[id] {
			t.Errorf("published unacknowledged event %s: replayed %d times, resent=%v; want once, resent", id, pub.times[id], pub.resent[id])
		}
	}
}

// TestTornReopen (second review, finding 2): a crash while reopen writes
// its block (any prefix of the new segment survives, the failed segment
// not yet deleted) loses none of the events committed before the
// failure; the old code kept the reset record at the head of the block
// and dropped the old copies (1 of 5 recovered).
func TestTornReopen(t *testing.T) {
	dir := t.TempDir()
	w, err := openWAL(dir, 64<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	var scratch []byte
	evs := make([]event.Event, 5)
	for i := range evs {
		evs[i] = durableEvent("key_a", i)
		evs[i].ID = "vt-x-" + strconv.Itoa(i+1)
		scratch = w.event(0, &evs[i], scratch)
	}
	if err := w.commit(); err != nil {
		t.Fatal(err)
	}
	oldSeg := w.segPath(w.segs[0].num)
	oldData, err := os.ReadFile(oldSeg)
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	_ = w.fail(errors.New("injected write error"))
	w.mu.Unlock()
	if err := w.reopen(6, "vt-x-", [][]event.Event{evs}); err != nil {
		t.Fatal(err)
	}
	newSeg := w.segPath(w.segs[len(w.segs)-1].num)
	_ = w.close(false)
	full, err := os.ReadFile(newSeg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(oldSeg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the replaced segment is still there: %v", err)
	}
	// The disk after a crash at any point of the block's writing: the
	// old segment and a prefix of the new one, cut at every record
	// boundary and in the middle of each record.
	var cuts []int
	for at := 0; at < len(full); {
		n := 8 + int(binary.LittleEndian.Uint32(full[at:]))
		cuts = append(cuts, at, at+n/2)
		at += n
	}
	cuts = append(cuts, len(full))
	for _, cut := range cuts {
		if err := os.WriteFile(oldSeg, oldData, 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(newSeg, full[:cut], 0o640); err != nil {
			t.Fatal(err)
		}
		rec, err := recoverWAL(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := recoveredEvents(rec); got != 5 {
			t.Errorf("new segment cut at %d of %d bytes: recovered %d of the 5 committed events", cut, len(full), got)
		}
	}
}

// TestReopenKeepsEarlierRun: a reopen block replaces only what its own
// run wrote (the id prefix its reset record names). An earlier run's
// unsealed events in the same directory (its files kept: the backlog
// could not be written) stay a batch of their own, although the reopen
// deleted the segment holding this run's boot record.
func TestReopenKeepsEarlierRun(t *testing.T) {
	dir := t.TempDir()
	var scratch []byte
	mk := func(id string) event.Event {
		return event.Event{ID: id, Time: time.Unix(1700000000, 0), KeyID: "key_a", Outcome: event.OutcomeValid}
	}
	w1, err := openWAL(dir, 1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"r1-x-1", "r1-x-2"} {
		e := mk(id)
		scratch = w1.event(0, &e, scratch)
	}
	if err := w1.close(false); err != nil {
		t.Fatal(err)
	}
	w2, err := openWAL(dir, 1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	e1, e2 := mk("r2-x-1"), mk("r2-x-2")
	scratch = w2.event(0, &e1, scratch)
	data := event.AppendBatch(nil, &event.Batch{ID: "r2-x-b1", Producer: "r2", Created: time.Now(), Events: []event.Event{e1}})
	w2.seal(0, 1, "r2-x-b1", 1, data)
	scratch = w2.event(0, &e2, scratch)
	if err := w2.commit(); err != nil {
		t.Fatal(err)
	}
	w2.mu.Lock()
	_ = w2.fail(errors.New("injected write error"))
	w2.mu.Unlock()
	if err := w2.reopen(3, "r2-x-", [][]event.Event{{e2}}); err != nil {
		t.Fatal(err)
	}
	if err := w2.close(false); err != nil {
		t.Fatal(err)
	}
	if files := walFiles(t, dir); len(files) != 2 {
		t.Fatalf("log files %v, want the first run's and the reopened segment", files)
	}
	if got, want := recoveredBatches(t, dir), "r1-x-1.t=r1-x-1,r1-x-2 r2-x-b1=r2-x-1 r2-x-2.t=r2-x-2"; got != want {
		t.Fatalf("recovered %q, want %q", got, want)
	}
}
