package verifier

import (
	"context"
	"testing"
	"time"

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
	time.Sleep(1500 * time.Millisecond) // let publishes time out and spool
	st := em.Stats()
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
