package verifier

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

// stuckPub stands for the bus as a verifier sees it just before a crash:
// batches leave but no acknowledgement ever comes back. It keeps each
// batch's event ids, so a test knows what the dead run had published.
// down makes Publish fail at once instead (an unreachable bus).
type stuckPub struct {
	mu   sync.Mutex
	ids  map[string][]string // batch id → event ids
	down atomic.Bool
}

type stuckAck struct{}

func (stuckAck) Done() <-chan struct{} { return nil }
func (stuckAck) Err() error            { return nil }

func (p *stuckPub) Publish(ctx context.Context, m bus.Message) (bus.PubAck, error) {
	if p.down.Load() {
		return nil, errors.New("bus down")
	}
	var b event.Batch
	if err := event.DecodeBatch(m.Data, &b); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ids == nil {
		p.ids = map[string][]string{}
	}
	for _, ev := range b.Events {
		p.ids[m.BatchID] = append(p.ids[m.BatchID], strings.Clone(ev.ID))
	}
	return stuckAck{}, nil
}

func (p *stuckPub) Flush(ctx context.Context) error { return nil }

func (p *stuckPub) eventIDs() map[string]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := map[string]bool{}
	for _, evs := range p.ids {
		for _, id := range evs {
			ids[id] = true
		}
	}
	return ids
}

// ackPub acknowledges every batch at once and counts how often each event
// id was published, and with Resent or without.
type ackPub struct {
	mu     sync.Mutex
	times  map[string]int
	resent map[string]bool
	// failAcks: batches leave but their acks report a failure (a
	// timeout): nothing is counted, the batch may have been stored.
	failAcks atomic.Bool
}

type failedAck struct{}

func (failedAck) Done() <-chan struct{} { return closedDone }
func (failedAck) Err() error            { return errors.New("ack timeout") }

type ackDone struct{}

var closedDone = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (ackDone) Done() <-chan struct{} { return closedDone }
func (ackDone) Err() error            { return nil }

func (p *ackPub) Publish(ctx context.Context, m bus.Message) (bus.PubAck, error) {
	var b event.Batch
	if err := event.DecodeBatch(m.Data, &b); err != nil {
		return nil, err
	}
	if p.failAcks.Load() {
		return failedAck{}, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.times == nil {
		p.times, p.resent = map[string]int{}, map[string]bool{}
	}
	for _, ev := range b.Events {
		id := strings.Clone(ev.ID)
		p.times[id]++
		p.resent[id] = m.Resent
	}
	return ackDone{}, nil
}

func (p *ackPub) Flush(ctx context.Context) error { return nil }

// crashCopy copies a live data directory: what a SIGKILL at this moment
// would leave on disk for the next start (Emit returns only once its event
// is fsynced).
func crashCopy(t *testing.T, dir string) string {
	t.Helper()
	to := filepath.Join(t.TempDir(), "crashed")
	if out, err := exec.Command("cp", "-a", dir, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	return to
}

func durableEvent(key string, i int) event.Event {
	return event.Event{Time: time.Now(), Project: "p", KeyID: key, Outcome: event.OutcomeValid,
		ClientIP: "203.0.113.7", Method: "GET", Route: "/r/" + strconv.Itoa(i), Status: 200}
}

func emitN(t *testing.T, em *Emitter, key string, n int) {
	t.Helper()
	for i := range n {
		ev := durableEvent(key, i)
		if !em.Emit(&ev) {
			t.Fatal("event refused")
		}
	}
}

// closeQuick closes an emitter whose bus never answers.
func closeQuick(em *Emitter) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_ = em.Close(ctx)
}

// resentDelivery is what a consumer saw of one delivered batch.
type resentDelivery struct {
	batch  string
	resent bool
	ids    []string
}

// collectDeliveries reads batches until want events arrived (or the
// deadline).
func collectDeliveries(t *testing.T, b bus.Bus, want int, deadline time.Duration) []resentDelivery {
	t.Helper()
	ctx := context.Background()
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "resent-" + strconv.FormatInt(time.Now().UnixNano(), 36)})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close(context.Background())
	var out []resentDelivery
	var batch event.Batch
	n := 0
	for end := time.Now().Add(deadline); n < want && time.Now().Before(end); {
		ds, err := cons.Fetch(ctx, 100, 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if err := event.DecodeBatch(d.Data, &batch); err != nil {
				t.Fatal(err)
			}
			rd := resentDelivery{batch: d.BatchID, resent: d.Resent}
			for i := range batch.Events {
				rd.ids = append(rd.ids, strings.Clone(batch.Events[i].ID))
			}
			n += len(rd.ids)
			out = append(out, rd)
			_ = cons.Ack(ctx, d)
		}
	}
	return out
}

// TestRecoveryPublishesResent: after a crash, the batches the durable log
// gives back (sealed and published but never acknowledged, and the
// unsealed tail, "<first event id>.t") reach a real bus marked Resent,
// with the event ids the dead run gave them; batches published for the
// first time are not marked.
func TestRecoveryPublishesResent(t *testing.T) {
	n := startNATS(t)
	b := n.connect(context.Background())
	live := t.TempDir()
	stuck := &stuckPub{}
	em, err := NewEmitter(EmitterConfig{Publisher: stuck, Partitions: b.Partitions(), Producer: "vres", DataDir: live,
		DurableLog: true, MaxBatch: 10, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer closeQuick(em)
	emitN(t, em, "key_a", 25) // one partition: b1, b2 sealed and sent, 5 unsealed
	crashed := crashCopy(t, live)
	published := stuck.eventIDs()
	if len(published) != 20 {
		t.Fatalf("the first run published %d events before the crash, want 20", len(published))
	}

	em2, err := NewEmitter(EmitterConfig{Publisher: b.Publisher(), Partitions: b.Partitions(), Producer: "vres", DataDir: crashed,
		DurableLog: true, FlushInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if got := em2.Stats().Recovered; got != 25 {
		t.Fatalf("recovered %d events, want 25", got)
	}
	emitN(t, em2, "key_b", 7)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := em2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	oldPrefix := "vres-" + strings.Split(firstKey(published), "-")[1] + "-"
	seen := map[string]int{}
	resentEvents, freshEvents := 0, 0
	for _, d := range collectDeliveries(t, b, 32, 20*time.Second) {
		for _, id := range d.ids {
			seen[id]++
			if strings.HasPrefix(id, oldPrefix) != d.resent {
				t.Errorf("batch %s (resent=%v) holds event %s of the %s run", d.batch, d.resent, id, map[bool]string{true: "dead", false: "new"}[strings.HasPrefix(id, oldPrefix)])
			}
		}
		if d.resent {
			resentEvents += len(d.ids)
		} else {
			freshEvents += len(d.ids)
		}
	}
	if resentEvents != 25 || freshEvents != 7 || len(seen) != 32 {
		t.Fatalf("delivered %d resent and %d fresh events, %d distinct; want 25, 7, 32", resentEvents, freshEvents, len(seen))
	}
	for id := range published {
		if seen[id] != 1 {
			t.Errorf("event %s published by the dead run delivered %d times after recovery", id, seen[id])
		}
	}
}

func firstKey(m map[string]bool) string {
	for k := range m {
		return k
	}
	return ""
}

// TestDurableLogWriteFailure (review finding 2): a write error in the
// durable log (disk full: the segment's descriptor swapped for /dev/full,
// ENOSPC) is not silent: it is counted, /readyz says so while the log
// stays failed, and Close returns it; the log reopens in a new segment
// holding again what was not yet published, so a crash after the failure
// gives back every event once, marked Resent, under the ids it had; and a
// clean stop after it leaves nothing to replay (the review's case: 100
// events stored twice).
func TestDurableLogWriteFailure(t *testing.T) {
	fail := failLog
	t.Run("clean stop", func(t *testing.T) {
		n := startNATS(t)
		b := n.connect(context.Background())
		dir := t.TempDir()
		cfg := EmitterConfig{Publisher: b.Publisher(), Partitions: b.Partitions(), Producer: "vfail", DataDir: dir,
			DurableLog: true, FlushInterval: time.Hour}
		em, err := NewEmitter(cfg)
		if err != nil {
			t.Fatal(err)
		}
		emitN(t, em, "key_a", 100) // committed one group at a time, never sealed
		fail(t, em)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		err = em.Close(ctx) // seals: the write fails
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Close after a log write failure returned %v, want the ENOSPC", err)
		}
		if st := em.Stats(); st.LogErrors == 0 || st.Published != 100 {
			t.Fatalf("stats %+v: want LogErrors > 0 and 100 published", st)
		}
		em2, err := NewEmitter(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := em2.Stats().Recovered; got != 0 {
			t.Errorf("the restart replays %d events that were published and acknowledged", got)
		}
		if err := em2.Close(ctx); err != nil {
			t.Fatal(err)
		}
		checkExactlyOnce(t, collectEvents(t, ctx, b, 100, 20*time.Second), 100)
	})
	t.Run("crash after", func(t *testing.T) {
		live := t.TempDir()
		stuck := &stuckPub{}
		em, err := NewEmitter(EmitterConfig{Publisher: stuck, Producer: "vfail", DataDir: live, DurableLog: true,
			MaxBatch: 10, FlushInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		defer closeQuick(em)
		emitN(t, em, "key_a", 15) // b1 sent, 5 unsealed
		fail(t, em)
		emitN(t, em, "key_a", 5) // the commit fails; b2 (5 + 5) is sealed and sent after the reopen
		if st := em.Stats(); st.LogErrors != 1 || em.LogHealth() != nil {
			t.Fatalf("after one failure and a reopen: LogErrors=%d health=%v", st.LogErrors, em.LogHealth())
		}
		crashed := crashCopy(t, live)
		published := stuck.eventIDs()
		pub := &ackPub{}
		em2, err := NewEmitter(EmitterConfig{Publisher: pub, Producer: "vfail", DataDir: crashed, DurableLog: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := em2.Stats().Recovered; got != 20 {
			t.Errorf("recovered %d events, want the 20 sent and never acknowledged", got)
		}
		if err := em2.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if len(published) != 20 || len(pub.times) != 20 {
			t.Fatalf("first run published %d events, the restart %d; want 20 and 20", len(published), len(pub.times))
		}
		for id := range published {
			if pub.times[id] != 1 || !pub.resent[id] {
				t.Errorf("event %s: replayed %d times, resent=%v; want once, resent", id, pub.times[id], pub.resent[id])
			}
		}
	})
	t.Run("stays failed", func(t *testing.T) {
		dir := t.TempDir()
		pub := &ackPub{}
		em, err := NewEmitter(EmitterConfig{Publisher: pub, Producer: "vfail", DataDir: dir, DurableLog: true,
			FlushInterval: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		logDir := filepath.Join(dir, "log")
		if err := os.Rename(logDir, logDir+".away"); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(logDir, nil, 0o640); err != nil { // no new segment can be made
			t.Fatal(err)
		}
		fail(t, em)
		emitN(t, em, "key_a", 10) // answered all the same
		rec := httptest.NewRecorder()
		em.ReadyGate(http.NotFoundHandler()).ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		if rec.Code != http.StatusServiceUnavailable || em.LogHealth() == nil {
			t.Fatalf("/readyz while the log cannot be written: %d %q", rec.Code, rec.Body.String())
		}
		if err := os.Remove(logDir); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(logDir+".away", logDir); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(60 * time.Second); em.LogHealth() != nil && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		if err := em.LogHealth(); err != nil {
			t.Fatalf("the log did not recover once a segment could be made: %v", err)
		}
		emitN(t, em, "key_a", 10)
		if err := em.Close(context.Background()); err == nil || !strings.Contains(err.Error(), "durable event log failed") {
			t.Fatalf("Close: %v", err)
		}
		if len(pub.times) != 20 {
			t.Fatalf("published %d events, want 20", len(pub.times))
		}
	})
}

// TestDataDirLocked (review finding 5): a second emitter on a data
// directory in use fails at once, naming it, instead of taking the first
// one's live log for a dead run's and publishing its events again; the
// lock goes with Close.
func TestDataDirLocked(t *testing.T) {
	dir := t.TempDir()
	pub := &ackPub{}
	em1, err := NewEmitter(EmitterConfig{Publisher: pub, Producer: "v1", DataDir: dir, DurableLog: true, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	emitN(t, em1, "key_a", 50)
	em2, err := NewEmitter(EmitterConfig{Publisher: pub, Producer: "v2", DataDir: dir, DurableLog: true})
	if err == nil {
		_ = em2.Close(context.Background())
		t.Fatal("a second emitter started on a data directory in use")
	}
	if !strings.Contains(err.Error(), "in use by another keymeter process") || !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q does not say the directory is in use", err)
	}
	if err := em1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for id, n := range pub.times {
		if n != 1 {
			t.Errorf("event %s published %d times", id, n)
		}
	}
	if len(pub.times) != 50 {
		t.Errorf("published %d events, want 50", len(pub.times))
	}
	em3, err := NewEmitter(EmitterConfig{Publisher: pub, Producer: "v3", DataDir: dir, DurableLog: true})
	if err != nil {
		t.Fatalf("after Close the directory is still locked: %v", err)
	}
	_ = em3.Close(context.Background())
}

// spoolIDs lists the batch ids in dir's spool, oldest first.
func spoolIDs(t *testing.T, dir string) []string {
	t.Helper()
	sp, err := openSpool(filepath.Join(dir, "spool"), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, f := range sp.files {
		ids = append(ids, f.id)
	}
	return ids
}

// TestFullSpoolAtRecovery (review finding 4): a verifier that died while
// its spool was full starts again: what does not fit stays in the log
// directory (a backlog) and moves into the spool as it drains; a start
// that dies after moving part of it never spools a batch twice; once the
// bus is back every answered event is published once.
func TestFullSpoolAtRecovery(t *testing.T) {
	live := t.TempDir()
	pub := &stuckPub{}
	pub.down.Store(true)
	const spoolMax = 8 << 10
	em, err := NewEmitter(EmitterConfig{Publisher: pub, Partitions: 4, Producer: "vfull", DataDir: live, DurableLog: true,
		MaxSpoolBytes: spoolMax, FlushInterval: time.Hour, MaxBatch: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer closeQuick(em)
	i := 0
	for ; em.Stats().Dropped == 0; i++ {
		ev := durableEvent("key_"+strconv.Itoa(i%8), i)
		em.Emit(&ev)
	}
	for j := range 8 { // answered after the spool filled, not yet batched: a .t batch per partition
		ev := durableEvent("key_"+strconv.Itoa(j), i+j)
		em.Emit(&ev)
	}
	st := em.Stats()
	answered := int(st.Emitted - st.Dropped)
	crashed := crashCopy(t, live)
	rec, err := recoverWAL(filepath.Join(crashed, "log"))
	if err != nil || len(rec.batches) < 2 {
		t.Fatalf("the crash left %d batches in the log (%v); the test needs 2 or more", len(rec.batches), err)
	}

	// First start, bus still down, room in the spool for the first
	// recovered batch only: it starts, and the rest waits in the log.
	sp, _ := openSpool(filepath.Join(crashed, "spool"), 1<<30)
	_, _, spoolBytes := sp.stats()
	b0 := &Emitter{cfg: EmitterConfig{Producer: "vfull"}}
	room := spoolBytes + int64(len(encodeSpool(b0.recoveredMsg(&rec.batches[0]), len(rec.batches[0].events))))
	em1, err := NewEmitter(EmitterConfig{Publisher: pub, Partitions: 4, Producer: "vfull", DataDir: crashed, DurableLog: true, MaxSpoolBytes: room})
	if err != nil {
		t.Fatalf("a verifier whose spool is full cannot start: %v", err)
	}
	if st := em1.Stats(); st.BacklogEvents == 0 || int(st.Recovered) != recoveredEvents(rec) {
		t.Fatalf("first start: %+v", st)
	}
	again := crashCopy(t, crashed) // and it dies too
	closeQuick(em1)

	// Second start, room for everything: the backlog moves into the
	// spool, and nothing moved before is spooled again.
	em2, err := NewEmitter(EmitterConfig{Publisher: pub, Partitions: 4, Producer: "vfull", DataDir: again, DurableLog: true, MaxSpoolBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(60 * time.Second); em2.Stats().BacklogEvents > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	closeQuick(em2)
	ids := spoolIDs(t, again)
	count := map[string]int{}
	for _, id := range ids {
		if count[id]++; count[id] == 2 {
			t.Errorf("batch %s spooled twice", id)
		}
	}
	if ents, _ := filepath.Glob(filepath.Join(again, "log", "*"+backlogExt)); len(ents) > 0 {
		t.Errorf("backlog files left once moved: %v", ents)
	}

	// Third start, the bus is back: every answered event once.
	acks := &ackPub{}
	em3, err := NewEmitter(EmitterConfig{Publisher: acks, Partitions: 4, Producer: "vfull", DataDir: again, DurableLog: true, MaxSpoolBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := em3.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for id, n := range acks.times {
		if n != 1 {
			t.Errorf("event %s published %d times", id, n)
		}
	}
	if len(acks.times) != answered {
		t.Fatalf("published %d distinct events for %d answered", len(acks.times), answered)
	}
}

func recoveredEvents(rec walRecovered) int {
	n := 0
	for _, b := range rec.batches {
		n += len(b.events)
	}
	return n
}

// TestSpoolReplayResent: a batch spooled after a publish that may have
// reached the bus (its ack reported a failure) is replayed marked Resent;
// batches spooled without being published (the bus was down) are not.
func TestSpoolReplayResent(t *testing.T) {
	pub := &ackPub{}
	pub.failAcks.Store(true)
	em, err := NewEmitter(EmitterConfig{Publisher: pub, Producer: "vspool", DataDir: t.TempDir(), FlushInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	wait := func(what string, cond func(EmitterStats) bool) {
		for deadline := time.Now().Add(30 * time.Second); !cond(em.Stats()) && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		if !cond(em.Stats()) {
			t.Fatalf("%s: %+v", what, em.Stats())
		}
	}
	emitN(t, em, "key_a", 1) // one event, one batch
	wait("the first batch spooled after its failed ack", func(s EmitterStats) bool { return s.Spooled == 1 })
	emitN(t, em, "key_a", 6) // spooled while offline: never published
	wait("later batches spooled", func(s EmitterStats) bool { return s.Spooled == 7 })
	pub.failAcks.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := em.Close(ctx); err != nil {
		t.Fatal(err)
	}
	resent := 0
	for id, n := range pub.times {
		if n != 1 {
			t.Errorf("event %s published %d times", id, n)
		}
		if pub.resent[id] {
			resent++
		}
	}
	if len(pub.times) != 7 || resent != 1 {
		t.Fatalf("%d events published, %d of them resent; want 7 and the first batch's 1", len(pub.times), resent)
	}
}
