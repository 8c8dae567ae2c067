package aggregator_test

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/verifier"
)

// A key driven past its quota through one verifier is refused by another
// running verifier, which never saw the traffic: only the quota state the
// aggregator published can tell it, within one flush interval plus bus
// latency.
func TestQuotaEnforcedByAnotherVerifier(t *testing.T) {
	b, db := newBus(t), newStore(t)
	// The verifiers and the aggregator end before the test returns: the
	// verifiers' data directories are removed and the store and bus closed
	// then, and a verifier still flushing into its directory made the
	// removal fail.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	table, err := keys.NewTable(keys.TableConfig{KeepState: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = table.Run(ctx, b) }()
	<-table.Ready()
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: b, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	k, err := svc.Create(ctx, keys.CreateParams{Project: "proj_quota", KeyLimits: keys.KeyLimits{MonthlyQuota: 40}})
	if err != nil {
		t.Fatal(err)
	}
	start := func(id string) string {
		addr := make(chan string, 1)
		cfg := verifier.RunConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir(), VerifierID: id, Bus: b, HTTP: verifier.HTTPConfig{Front: verifier.Fronts["envoy"]},
			OnListen: func(m, _, _ net.Addr) { addr <- m.String() }}
		cfg.Emitter.FlushInterval = 10 * time.Millisecond
		wg.Go(func() { _ = verifier.Run(ctx, cfg) })
		select {
		case a := <-addr:
			return "http://" + a
		case <-time.After(20 * time.Second):
			t.Fatal("verifier did not start")
		}
		return ""
	}
	front, other := start("v-front"), start("v-other")
	status := func(base string) int {
		req, _ := http.NewRequest("GET", base+"/v1/x", nil)
		req.Header.Set("Authorization", "Bearer "+k.Secret.Reveal())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for deadline := time.Now().Add(30 * time.Second); status(other) != 200; { // bounds a failing test only
		if time.Now().After(deadline) {
			t.Fatal("the new key never verified")
		}
		time.Sleep(5 * time.Millisecond)
	}
	quotas, err := aggregator.NewQuotas(aggregator.QuotaConfig{Keys: table, KeyLog: b, Usage: db})
	if err != nil {
		t.Fatal(err)
	}
	const flush = 200 * time.Millisecond
	agg, err := aggregator.New(aggregator.Config{FlushInterval: flush}, b, db, aggregator.WithObserver(quotas))
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = agg.Run(ctx) })

	// 39 more allowed requests through the front verifier: 40 in all.
	for i := 0; i < 39; i++ {
		if st := status(front); st != 200 {
			t.Fatalf("request %d refused (%d) before the quota was used", i+2, st)
		}
	}
	used := time.Now()
	var refusedAfter time.Duration
	for deadline := used.Add(30 * time.Second); ; { // bounds a failing test only
		if st := status(other); st == http.StatusTooManyRequests {
			refusedAfter = time.Since(used)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other verifier never refused the key whose quota is used up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("quota exceeded: refused by the other verifier %s after the last allowed request (flush interval %s)", refusedAfter, flush)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) { // bounds a failing test only
		st, _ := table.State(k.State.GetId())
		if st.GetQuotaUsed() >= 40 && st.GetQuotaState().String() == "QUOTA_STATE_EXCEEDED" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("published quota: used %d, state %v; want ≥ 40, exceeded", st.GetQuotaUsed(), st.GetQuotaState())
		}
	}
}
