package verifier

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

func TestEmitterSurvivesBusOutage(t *testing.T) {
	ctx := context.Background()
	n := startNATS(t)
	b := n.connect(ctx)
	em, err := NewEmitter(EmitterConfig{Publisher: b.Publisher(), Partitions: b.Partitions(), Producer: "vtest",
		DataDir: t.TempDir(), FlushInterval: 5 * time.Millisecond, MaxBatch: 200})
	if err != nil {
		t.Fatal(err)
	}
	emit := func(n int) {
		for i := range n {
			ev := event.Event{Time: time.Now(), KeyID: "key_" + string(rune('a'+i%20)), Outcome: event.OutcomeValid, ClientIP: "203.0.113.7"}
			for !em.Emit(&ev) {
				t.Fatal("event dropped")
			}
			if i%100 == 0 {
				time.Sleep(time.Millisecond) // a request stream, not one burst
			}
		}
	}
	emit(2000)
	n.stop()
	emit(6000)
	// Publishes time out and spool: wait for it (the deadline only bounds
	// a failing test; a fixed 1.5 s was short on a loaded machine).
	st := em.Stats()
	for deadline := time.Now().Add(30 * time.Second); (st.BusUp || st.Spooled == 0) && time.Now().Before(deadline); st = em.Stats() {
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("during outage: %+v", st)
	if st.BusUp || st.Spooled == 0 {
		t.Errorf("expected the emitter to notice the outage and spool")
	}
	n.start()
	emit(2000)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := em.Close(cctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("after close: %+v", em.Stats())
	seen := collectEvents(t, ctx, b, 10000, 30*time.Second)
	checkExactlyOnce(t, seen, 10000)
}

// TestEmitterSpoolAcrossRestart: events spooled while the bus is down and
// still on disk when the verifier stops are replayed by the next run, and
// arrive once; event ids stay unique across the two runs.
func TestEmitterSpoolAcrossRestart(t *testing.T) {
	ctx := context.Background()
	n := startNATS(t)
	b := n.connect(ctx)
	dir := t.TempDir()
	newEm := func() *Emitter {
		em, err := NewEmitter(EmitterConfig{Publisher: b.Publisher(), Partitions: b.Partitions(), Producer: "vrestart",
			DataDir: dir, FlushInterval: 5 * time.Millisecond, MaxBatch: 100, PublishTimeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return em
	}
	emit := func(em *Emitter, n int) {
		for range n {
			ev := event.Event{Time: time.Now(), KeyID: "key_a", Outcome: event.OutcomeValid}
			if !em.Emit(&ev) {
				t.Fatal("dropped")
			}
		}
	}
	n.stop()
	em := newEm()
	emit(em, 1500)
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := em.Close(cctx)
	cancel()
	if err == nil {
		t.Fatal("Close reported an empty spool while the bus was down")
	}
	if st := em.Stats(); st.SpoolEvents != 1500 || st.Dropped != 0 {
		t.Fatalf("first run: %+v", st)
	}
	time.Sleep(2 * time.Millisecond) // a new boot epoch
	n.start()
	em2 := newEm()
	emit(em2, 500)
	cctx, cancel = context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := em2.Close(cctx); err != nil {
		t.Fatal(err)
	}
	if st := em2.Stats(); st.Replayed < 1500 || st.SpoolEvents != 0 {
		t.Fatalf("second run: %+v", st)
	}
	checkExactlyOnce(t, collectEvents(t, ctx, b, 2000, 20*time.Second), 2000)
}

// TestEmitterSpoolFull: with the bus down and the spool full, events are
// dropped and counted, never blocking Emit.
func TestEmitterSpoolFull(t *testing.T) {
	ctx := context.Background()
	n := startNATS(t)
	b := n.connect(ctx)
	n.stop()
	em, err := NewEmitter(EmitterConfig{Publisher: b.Publisher(), Partitions: 1, Producer: "vfull", DataDir: t.TempDir(),
		FlushInterval: 5 * time.Millisecond, MaxBatch: 100, MaxSpoolBytes: 20_000, PublishTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 5000 {
		ev := event.Event{Time: time.Now(), KeyID: "key_a", Outcome: event.OutcomeValid, Route: "/v1/some/longer/route"}
		em.Emit(&ev)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Emit blocked: 5000 events took %v", d)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_ = em.Close(cctx)
	st := em.Stats()
	if st.Dropped == 0 || st.SpoolBytes > 20_000 || st.Dropped+uint64(st.SpoolEvents) != 5000 {
		t.Fatalf("stats: %+v", st)
	}
}

// TestSpoolCorruptFile: a damaged spool file neither stops the emitter
// from starting nor blocks the batches behind it.
func TestSpoolCorruptFile(t *testing.T) {
	dir := t.TempDir()
	sp, err := openSpool(filepath.Join(dir, "spool"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.put(bus.Message{Key: "k", BatchID: "b1", Source: "s", Data: []byte("one")}, 1); err != nil {
		t.Fatal(err)
	}
	if err := sp.put(bus.Message{Key: "k", BatchID: "b2", Source: "s", Data: []byte("two")}, 2); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sp.path(1), []byte{0xff, 0xff, 0xff}, 0o640); err != nil {
		t.Fatal(err)
	}
	sp, err = openSpool(filepath.Join(dir, "spool"), 1<<20)
	if err != nil {
		t.Fatalf("reopen with a corrupt file: %v", err)
	}
	if b, n, _ := sp.stats(); b != 2 || n != 2 {
		t.Fatalf("stats: %d batches, %d events", b, n)
	}
	seq, _, _, ok, err := sp.oldest()
	if !ok || err == nil || seq != 1 {
		t.Fatalf("oldest: seq %d ok %v err %v", seq, ok, err)
	}
	_, _ = sp.remove(seq)
	_, m, n, ok, err := sp.oldest()
	if !ok || err != nil || m.BatchID != "b2" || string(m.Data) != "two" || n != 2 {
		t.Fatalf("second: %+v %d %v %v", m, n, ok, err)
	}
}
