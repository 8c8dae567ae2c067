package verifier

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/keys"
)

// TestBusOutageRequests: 10,000 requests pass through the middleware while
// the bus is stopped for the middle of the run and then restarted; every
// one of their events arrives downstream exactly once by event id.
func TestBusOutageRequests(t *testing.T) { backends(t, true, testBusOutageRequests) }

func testBusOutageRequests(t *testing.T, n testBackend) {
	ctx := context.Background()
	b := n.connect(ctx)
	svc := newService(t, ctx, b, nil)
	k, err := svc.Create(ctx, keys.CreateParams{Project: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := keys.NewTable(keys.TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = tbl.Run(tctx, b) }()
	<-tbl.Ready()
	v, err := New(Config{Table: tbl, Routes: []Route{{Prefix: "/anon", Anonymous: true, AnonRatePerS: 1e6, AnonBurst: 1e6}}})
	if err != nil {
		t.Fatal(err)
	}
	em, err := NewEmitter(EmitterConfig{Publisher: b.Publisher(), Partitions: b.Partitions(), Producer: "outage",
		DataDir: t.TempDir(), FlushInterval: 5 * time.Millisecond, MaxBatch: 250})
	if err != nil {
		t.Fatal(err)
	}
	h := NewServer(v, em, nil, HTTPConfig{}).Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	const total = 10000
	outcomes := map[int]int{}
	for i := range total {
		if i == 2000 {
			n.stop()
		}
		if i == 8000 {
			// Publishes time out: the emitter spools (the deadline only
			// bounds a failing test; a fixed 1.5 s was short under load).
			st := em.Stats()
			for deadline := time.Now().Add(30 * time.Second); (st.BusUp || st.Spooled == 0) && time.Now().Before(deadline); st = em.Stats() {
				time.Sleep(20 * time.Millisecond)
			}
			if st.BusUp || st.Spooled == 0 {
				t.Errorf("during the outage: %+v", st)
			}
			n.start()
		}
		req := httptest.NewRequest("GET", "/v1/items", nil)
		switch i % 3 {
		case 0:
			req.Header.Set("X-API-Key", k.Secret.Reveal())
		case 1:
			req.URL.Path = "/anon/x"
		case 2: // missing key: refused, still metered
		}
		req.RemoteAddr = fmt.Sprintf("198.51.100.%d:1234", i%250)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		outcomes[w.Code]++
		if i%200 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if outcomes[200] != 6667 || outcomes[401] != 3333 {
		t.Fatalf("statuses %v", outcomes)
	}
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	if err := em.Close(cctx); err != nil {
		t.Fatal(err)
	}
	st := em.Stats()
	t.Logf("emitter: %+v", st)
	if st.Dropped != 0 || st.Emitted != total {
		t.Fatalf("emitter lost events: %+v", st)
	}
	checkExactlyOnce(t, collectEvents(t, ctx, b, total, 30*time.Second), total)
}
