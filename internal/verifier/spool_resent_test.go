package verifier

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

// snapPub acknowledges like ackPub and, at each publish, keeps a copy of
// every file in the spool directory as it is then.
type snapPub struct {
	ackPub
	dir   string
	mu    sync.Mutex
	files map[string][]byte
}

func (p *snapPub) Publish(ctx context.Context, m bus.Message) (bus.PubAck, error) {
	ents, _ := os.ReadDir(p.dir)
	p.mu.Lock()
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(p.dir, e.Name())); err == nil {
			p.files[e.Name()] = b
		}
	}
	p.mu.Unlock()
	return p.ackPub.Publish(ctx, m)
}

// TestSpoolLeftoverResent (second review, suspected): spool files whose
// removal failed after their batch was published (here: every one, then
// a crash while the last was published) are published again marked
// Resent at the next start, not only the oldest: the replayer marks a
// file before publishing it. The old code sent 2 of the 3 unmarked.
func TestSpoolLeftoverResent(t *testing.T) {
	data := t.TempDir()
	spoolDir := filepath.Join(data, "spool")
	sp, err := openSpool(spoolDir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		ev := durableEvent("key_a", i)
		ev.ID = "vleft-x-" + strconv.Itoa(i+1)
		b := event.Batch{ID: "vleft-x-b" + strconv.Itoa(i+1), Producer: "vleft", Created: time.Now(), Events: []event.Event{ev}}
		m := bus.Message{Key: ev.PartitionKey(), BatchID: b.ID, Source: "vleft", Data: event.AppendBatch(nil, &b)}
		if err := sp.put(m, 1); err != nil {
			t.Fatal(err)
		}
	}
	pub := &snapPub{dir: spoolDir, files: map[string][]byte{}}
	em, err := NewEmitter(EmitterConfig{Publisher: pub, Producer: "vleft", DataDir: data})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := em.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(pub.times) != 3 {
		t.Fatalf("first run published %d events, want 3", len(pub.times))
	}
	// The disk had no file been removed: each as it was when published.
	again := t.TempDir()
	if err := os.MkdirAll(filepath.Join(again, "spool"), 0o750); err != nil {
		t.Fatal(err)
	}
	for name, b := range pub.files {
		if err := os.WriteFile(filepath.Join(again, "spool", name), b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	pub2 := &ackPub{}
	em2, err := NewEmitter(EmitterConfig{Publisher: pub2, Producer: "vleft", DataDir: again})
	if err != nil {
		t.Fatal(err)
	}
	if err := em2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(pub2.times) != 3 {
		t.Fatalf("second start published %d events, want the 3 left in the spool", len(pub2.times))
	}
	for id := range pub2.times {
		if !pub2.resent[id] {
			t.Errorf("event %s, published before, sent again unmarked", id)
		}
	}
}

// TestBacklogTmpRemoved (second review, suspected): a backlog file whose
// writing a crash interrupted (<N>.backlog.tmp) is removed at the next
// start, not left forever; the log files it was to replace are replayed.
func TestBacklogTmpRemoved(t *testing.T) {
	data := t.TempDir()
	logDir := filepath.Join(data, "log")
	w, err := openWAL(logDir, 1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	ev := durableEvent("key_a", 1)
	ev.ID = "vtmp-x-1"
	w.event(0, &ev, nil)
	if err := w.close(false); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(logDir, "00000000000000000001.backlog.tmp")
	if err := os.WriteFile(tmp, []byte("half a backlog"), 0o640); err != nil {
		t.Fatal(err)
	}
	pub := &ackPub{}
	em, err := NewEmitter(EmitterConfig{Publisher: pub, Producer: "vtmp", DataDir: data, DurableLog: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("%s still there after the start: %v", tmp, err)
	}
	if err := em.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if pub.times["vtmp-x-1"] != 1 {
		t.Errorf("the dead run's event published %d times, want 1", pub.times["vtmp-x-1"])
	}
}
