package verifier

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/keys"
)

// smallMax is the bus's message size in these tests: far below the
// requests' headers, as a stock nats-server's 1 MiB is below 1 MiB of
// headers.
const smallMax = 64 << 10

// sizeBackends runs fn against an embedded NATS server whose max_payload
// is smallMax, and against Kafka with the producer's (and topic's) message
// size at smallMax.
func sizeBackends(t *testing.T, fn func(t *testing.T, b bus.Bus)) {
	t.Run("nats", func(t *testing.T) {
		n := startNATSMax(t, smallMax)
		fn(t, n.connect(context.Background()))
	})
	t.Run("kafka", func(t *testing.T) {
		if testing.Short() {
			t.Skip("-short: the Kafka runs need a broker")
		}
		k := newTestKafka(t, false)
		b, err := kafkabus.New(context.Background(), kafkabus.Config{Brokers: k.brokers, TopicPrefix: k.prefix, Partitions: 4,
			SessionTimeout: 6 * time.Second, MaxMessageBytes: smallMax})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = b.Close(ctx)
		})
		fn(t, b)
	})
}

// consumeUntil reads event batches from b (a new group, from the start)
// until done says so or a minute passes (which bounds a failing test
// only), checking each message's size and counting batch ids.
func consumeUntil(t *testing.T, b bus.Bus, done func(evs []event.Event, batchIDs map[string]int) bool) (evs []event.Event, batchIDs map[string]int) {
	t.Helper()
	ctx := context.Background()
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: fmt.Sprintf("size-%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close(ctx)
	batchIDs = map[string]int{}
	var batch event.Batch
	end := time.Now().Add(time.Minute)
	for !done(evs, batchIDs) {
		if time.Now().After(end) {
			t.Fatalf("gave up after a minute: %d events, %d batches consumed", len(evs), len(batchIDs))
		}
		ds, err := cons.Fetch(ctx, 100, 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if len(d.Data) > smallMax {
				t.Errorf("batch %s of %d bytes on a bus with a %d byte limit", d.BatchID, len(d.Data), smallMax)
			}
			if err := event.DecodeBatch(bytes.Clone(d.Data), &batch); err != nil {
				t.Fatal(err)
			}
			batchIDs[d.BatchID]++
			if batchIDs[d.BatchID] == 1 { // a duplicate (Kafka) is the aggregator's to drop
				evs = append(evs, batch.Events...)
			}
			batch.Events = nil
			if err := cons.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	return evs, batchIDs
}

// TestProxyHugeHeadersKeepMetering is finding 1 of the 2026-11-27
// security test: unauthenticated requests with huge headers made event
// batches larger than the bus's message size, the publish failed, the
// emitter spooled every later batch behind the oversized one and retried
// it forever, so valid keys' events were never published again. Now the
// server refuses headers over 64 KiB (431), the event fields are bounded,
// and batches are closed below the bus's limit: valid keys' events keep
// arriving and nothing stays in the spool.
func TestProxyHugeHeadersKeepMetering(t *testing.T) { sizeBackends(t, testProxyHugeHeaders) }

func testProxyHugeHeaders(t *testing.T, b bus.Bus) {
	ctx := context.Background()
	svc := newService(t, ctx, b, nil)
	up, _ := newUpstream(t)
	// A long flush interval gathers the anonymous events into big batches.
	rv := startVerifier(t, b, RunConfig{Upstream: up.URL, Routes: []Route{{Prefix: "/public", Anonymous: true, AnonRatePerS: 1e4, AnonBurst: 1000}},
		Emitter: EmitterConfig{FlushInterval: 200 * time.Millisecond}})
	k, err := svc.Create(ctx, keys.CreateParams{Project: "acme", Name: "victim", KeyLimits: keys.KeyLimits{RatePerS: 1000, Burst: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	secret, keyID := k.Secret.Reveal(), k.State.GetId()
	waitOutcome(t, rv, secret, "valid")

	// 1 MB of User-Agent: refused before any verification, as Go does
	// beyond MaxHeaderBytes.
	req, _ := http.NewRequest("GET", rv.main+"/public/a", nil)
	req.Header.Set("User-Agent", strings.Repeat("u", 1_000_000))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("1 MB User-Agent: status %d, want 431", resp.StatusCode)
	}

	// Just below the header limit: 58 KB of User-Agent, 1.5 KB of Host,
	// 3 KB of path, from 40 requests at once (8 at a time).
	ua := strings.Repeat("Mozilla/5.0 ", 58_000/12)
	host := strings.Repeat("h", 1500) + ".example"
	path := "/public/" + strings.Repeat("p", 3000)
	var wg sync.WaitGroup
	work := make(chan int)
	var mu sync.Mutex
	statuses := map[int]int{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				req, _ := http.NewRequest("GET", rv.main+path, nil)
				req.Host = host
				req.Header.Set("User-Agent", ua)
				resp, err := http.DefaultClient.Do(req)
				mu.Lock()
				if err != nil {
					statuses[-1]++
				} else {
					resp.Body.Close()
					statuses[resp.StatusCode]++
				}
				mu.Unlock()
			}
		}()
	}
	for i := range 40 {
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("big-header requests: statuses %v", statuses)
	if statuses[431] > 0 || statuses[-1] > 0 {
		t.Fatalf("requests below the header limit refused: %v", statuses)
	}

	// The valid key goes on being metered.
	const valid = 20
	for range valid {
		if resp, _ := do(t, "GET", rv.main+"/v1/items", map[string]string{"X-API-Key": secret}); resp.StatusCode != 200 {
			t.Fatalf("valid key: %d", resp.StatusCode)
		}
	}
	count := func(evs []event.Event) (mine, big int) {
		for i := range evs {
			if evs[i].KeyID == keyID && evs[i].Route == "/v1/items" {
				mine++
			}
			if strings.HasPrefix(evs[i].Route, "/public/pp") {
				big++
			}
		}
		return
	}
	evs, _ := consumeUntil(t, b, func(evs []event.Event, _ map[string]int) bool {
		mine, big := count(evs)
		return mine >= valid && big >= 40
	})
	for i := range evs {
		ev := &evs[i]
		if len(ev.UserAgent) > MaxEventUserAgent || len(ev.Host) > MaxEventHost || len(ev.Route) > MaxEventRoute {
			t.Fatalf("event %s not bounded: user agent %d, host %d, route %d bytes", ev.ID, len(ev.UserAgent), len(ev.Host), len(ev.Route))
		}
	}
	mine, big := count(evs)
	t.Logf("%d events consumed: %d of the valid key, %d with big headers", len(evs), mine, big)

	_, metrics := do(t, "GET", rv.admin+"/metrics", nil)
	for _, want := range []string{"keymeter_verifier_bus_up 1", "keymeter_verifier_spool_events 0", "keymeter_verifier_events_deadlettered_total 0"} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestEmitterBatchesBelowMaxMessage: events emitted without the HTTP
// layer's bounds (10 KB each, 60 of them, one partition, a flush interval
// long enough to gather them all) are published in batches that each fit
// the bus, not in one batch the bus refuses.
func TestEmitterBatchesBelowMaxMessage(t *testing.T) {
	sizeBackends(t, func(t *testing.T, b bus.Bus) {
		em, err := NewEmitter(EmitterConfig{Publisher: b.Publisher(), Partitions: b.Partitions(), Producer: "vsize",
			DataDir: t.TempDir(), FlushInterval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		const n = 60
		ua := strings.Repeat("a", 10_000)
		for range n {
			em.Emit(&event.Event{Time: time.Now(), KeyID: "key_one", Outcome: event.OutcomeValid, UserAgent: ua})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // bounds a failing test only
		defer cancel()
		if err := em.Close(ctx); err != nil {
			t.Fatalf("close: %v (stats %+v)", err, em.Stats())
		}
		st := em.Stats()
		if st.Published != n || st.Spooled != 0 || st.Split != 0 {
			t.Fatalf("stats %+v: want %d published directly, none spooled or split", st, n)
		}
		evs, ids := consumeUntil(t, b, func(evs []event.Event, _ map[string]int) bool { return len(evs) >= n })
		if len(evs) != n || len(ids) < 2 {
			t.Fatalf("%d events in %d batches", len(evs), len(ids))
		}
		t.Logf("%d events in %d batches", len(evs), len(ids))
	})
}

// spoolOversized writes what an older verifier (no byte bound) could leave
// in dataDir's spool: a 200 KB batch of 40 events, a batch of one event
// too large for the bus alone, and a small batch; it returns the ids of
// the events that fit.
func spoolOversized(t *testing.T, dataDir string) []string {
	t.Helper()
	sp, err := openSpool(filepath.Join(dataDir, "spool"), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	mk := func(batchID string, n, uaBytes int, keep bool) {
		b := event.Batch{ID: batchID, Producer: "vold", Created: time.Now()}
		for i := range n {
			id := fmt.Sprintf("%s-e%d", batchID, i)
			b.Events = append(b.Events, event.Event{ID: id, Time: time.Now(), KeyID: "key_one", Outcome: event.OutcomeValid,
				UserAgent: strings.Repeat("u", uaBytes), VerifierID: "vold"})
			if keep {
				ids = append(ids, id)
			}
		}
		m := bus.Message{Key: "key_one", BatchID: batchID, Source: "vold", Data: event.AppendBatch(nil, &b)}
		if err := sp.put(m, n); err != nil {
			t.Fatal(err)
		}
	}
	mk("vold-x-b1", 40, 5_000, true)
	mk("vold-x-b2", 1, 70_000, false)
	mk("vold-x-b3", 2, 100, true)
	return ids
}

// TestSpoolReplaySplitsOversized: a spool holding a batch larger than the
// bus accepts (written by a version without the byte bound) is replayed
// split, not retried forever; an event too large alone is dead-lettered
// and counted; the batches after it are published. Replaying the same
// spool again publishes the same batch ids (the split is deterministic),
// so the bus's and the aggregator's batch-id deduplication hold.
func TestSpoolReplaySplitsOversized(t *testing.T) {
	sizeBackends(t, func(t *testing.T, b bus.Bus) {
		dir := t.TempDir()
		want := spoolOversized(t, dir)
		again := t.TempDir()
		spoolOversized(t, again)

		replay := func(dir string) EmitterStats {
			em, err := NewEmitter(EmitterConfig{Publisher: b.Publisher(), Partitions: b.Partitions(), Producer: "vnew", DataDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // bounds a failing test only
			defer cancel()
			if err := em.Close(ctx); err != nil {
				t.Fatalf("close: %v (stats %+v)", err, em.Stats())
			}
			return em.Stats()
		}
		st := replay(dir)
		if st.SpoolEvents != 0 || st.DeadLettered != 1 || st.Replayed != uint64(len(want)) || st.Split < 3 || !st.BusUp {
			t.Fatalf("stats after replay %+v: want the spool empty, 1 dead-lettered, %d replayed, at least 3 splits", st, len(want))
		}
		dl, err := os.ReadFile(filepath.Join(dir, "deadletter", "reasons.log"))
		if err != nil || !strings.Contains(string(dl), "batch=vold-x-b2 ") {
			t.Fatalf("dead-letter reasons: %q, %v", dl, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "deadletter", "vold-x-b2.batch")); err != nil {
			t.Fatal(err)
		}
		evs, ids := consumeUntil(t, b, func(evs []event.Event, _ map[string]int) bool { return len(evs) >= len(want) })
		seen := map[string]int{}
		for i := range evs {
			seen[evs[i].ID]++
		}
		for _, id := range want {
			if seen[id] != 1 {
				t.Errorf("event %s arrived %d times", id, seen[id])
			}
		}
		if len(seen) != len(want) {
			t.Fatalf("%d distinct events, want %d", len(seen), len(want))
		}
		for id := range ids {
			if id != "vold-x-b3" && !strings.HasPrefix(id, "vold-x-b1.") {
				t.Errorf("unexpected batch id %s", id)
			}
		}

		// The same spool replayed again: the same batch ids.
		st2 := replay(again)
		if st2.SpoolEvents != 0 || st2.DeadLettered != 1 {
			t.Fatalf("second replay: %+v", st2)
		}
		// A sentinel after it in the same partition: once it is read,
		// everything the second replay published was.
		sb := event.Batch{ID: "sentinel", Producer: "vtest", Created: time.Now(), Events: []event.Event{{ID: "sentinel-e0", Time: time.Now(), KeyID: "key_one", Outcome: event.OutcomeValid}}}
		ack, err := b.Publisher().Publish(context.Background(), bus.Message{Key: "key_one", BatchID: sb.ID, Source: "vtest", Data: event.AppendBatch(nil, &sb)})
		if err != nil {
			t.Fatal(err)
		}
		<-ack.Done()
		if err := ack.Err(); err != nil {
			t.Fatal(err)
		}
		_, ids2 := consumeUntil(t, b, func(_ []event.Event, ids map[string]int) bool { return ids["sentinel"] > 0 })
		delete(ids2, "sentinel")
		for id := range ids2 {
			if _, ok := ids[id]; !ok {
				t.Errorf("second replay published new batch id %s", id)
			}
		}
	})
}
