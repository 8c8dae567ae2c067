package verifier

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
)

// TestGlobalRateLimitAccuracy: 4 verifiers behind a round-robin balancer,
// sharing admissions over the bus (NATS, Kafka) every 50 ms, hold a key
// limited to 100/s (burst 20) within ±10% of what one verifier would admit,
// while offered 1,000 requests/s for 10 s; unshared, they admit about 4×.
// Time is simulated (each request carries its own time; every 50 ms of it
// the verifiers report and the test waits until every peer has charged the
// reports), so the figure depends neither on the machine's speed nor on the
// bus's latency: what it measures is the scheme's own overshoot.
func TestGlobalRateLimitAccuracy(t *testing.T) {
	var unshared, limit int
	backends(t, false, func(t *testing.T, be testBackend) {
		if unshared == 0 {
			unshared, limit = simulateRateLimit(t, nil)
			t.Logf("unshared: %d admitted, %.2f× one verifier's limit %d", unshared, float64(unshared)/float64(limit), limit)
			if unshared < 3*limit {
				t.Errorf("unshared verifiers admitted %d, expected about 4× %d", unshared, limit)
			}
		}
		shared, _ := simulateRateLimit(t, be)
		t.Logf("key limit 100/s burst 20, 10 s at 1000 requests/s round-robin over 4 verifiers: one verifier's limit %d; shared %d (%.3f×)",
			limit, shared, float64(shared)/float64(limit))
		if dev := float64(shared)/float64(limit) - 1; dev > 0.10 || dev < -0.10 {
			t.Errorf("shared verifiers admitted %d, %.1f%% off the limit %d (want within ±10%%)", shared, 100*dev, limit)
		}
	})
}

// simulateRateLimit runs the simulation of TestGlobalRateLimitAccuracy,
// the verifiers sharing over be (nil: not sharing), and returns the
// requests admitted and one verifier's limit over the run.
func simulateRateLimit(t *testing.T, be testBackend) (admitted, limit int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sec, err := keys.Generate(keys.EnvLive)
	if err != nil {
		t.Fatal(err)
	}
	h := sec.Hash()
	id, _ := keys.NewID()
	st := &keymeterv1.KeyState{Id: id, Project: "proj_rl", Status: keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, Hash: h[:], Env: "live",
		Version: 1, RateLimitPerS: 100, RateLimitBurst: 20}
	val, err := proto.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	const nv = 4
	shared := be != nil
	var vs [nv]*Verifier
	var shares [nv]*RateShare
	var sim int64 // simulated clock, ns
	for i := range nv {
		tbl, err := keys.NewTable(keys.TableConfig{})
		if err != nil {
			t.Fatal(err)
		}
		tbl.Apply([]bus.KeyUpdate{{ID: id, Value: val}, {EndOfSnapshot: true}})
		if vs[i], err = New(Config{Table: tbl}); err != nil {
			t.Fatal(err)
		}
		if !shared {
			continue
		}
		rs, err := NewRateShare(tbl, be.connect(ctx).RateTransport(), "v"+string(rune('0'+i)), 50*time.Millisecond, nil)
		if err != nil {
			t.Fatal(err)
		}
		rs.now = func() int64 { return sim }
		stop, err := rs.tr.SubscribeRates(ctx, rs.receive) // every report published from now on is seen
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		shares[i] = rs
	}
	secret := sec.Reveal()
	var chargedSoFar uint64
	start := time.Now().UnixNano()
	ok := 0
	const offered, seconds = 1000, 10
	for r := 0; r < offered*seconds; r++ {
		sim = start + int64(r)*int64(time.Second)/offered
		i := r % nv
		d := vs[i].Verify(&Request{Key: secret, ClientIP: ip1, Method: "GET", Path: "/", Now: sim})
		if d.Allowed() {
			ok++
			if shared {
				shares[i].Note(id)
			}
		}
		if shared && (r+1)%(offered/20) == 0 { // every 50 ms of simulated time
			chargedSoFar = shareRound(ctx, t, shares[:], chargedSoFar)
		}
	}
	return ok, 100*seconds + 20
}

// shareRound has every verifier report and waits until its peers have
// charged the reports; it returns the admissions charged so far.
func shareRound(ctx context.Context, t *testing.T, shares []*RateShare, chargedSoFar uint64) uint64 {
	var want uint64
	for _, s := range shares {
		before, _, _ := s.Stats()
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		after, _, _ := s.Stats()
		want += (after - before) * uint64(len(shares)-1)
	}
	var got uint64
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = 0
		for _, s := range shares {
			_, _, c := s.Stats()
			got += c
		}
		if got >= chargedSoFar+want || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Microsecond)
	}
	if got < chargedSoFar+want {
		t.Fatalf("peers charged %d admissions, want %d", got-chargedSoFar, want)
	}
	return got
}

// BenchmarkGlobalRateLimitWallClock measures the same on real time: 4
// verifier roles (Run), each with its own bus connection (NATS, Kafka), a
// round-robin client offering 1,000 requests/s for 5 s to a key limited to
// 100/s burst 20, without sharing and sharing every 20, 50 and 200 ms. The
// reports' mean age on arrival (bus latency) is reported with each.
// Timing-dependent, so a benchmark (run it with -benchtime 1x), not a test:
//
//	go test ./internal/verifier -run '^$' -bench GlobalRateLimitWallClock -benchtime 1x
func BenchmarkGlobalRateLimitWallClock(b *testing.B) {
	for _, name := range []string{"nats", "kafka"} {
		b.Run(name, func(b *testing.B) {
			for _, share := range []time.Duration{0, 20 * time.Millisecond, 50 * time.Millisecond, 200 * time.Millisecond} {
				var be testBackend
				if name == "nats" {
					be = startNATS(b)
				} else {
					be = newTestKafka(b, false)
				}
				ratio, age := wallClockRateLimit(b, be, share)
				b.ReportMetric(ratio, fmt.Sprintf("ratio_share_%s", share))
				if share > 0 {
					b.ReportMetric(age*1e3, fmt.Sprintf("report_age_ms_share_%s", share))
				}
			}
		})
	}
}

// wallClockRateLimit runs one BenchmarkGlobalRateLimitWallClock figure: the
// admitted requests over one verifier's limit, and the mean age of the
// reports on arrival in seconds.
func wallClockRateLimit(b *testing.B, be testBackend, share time.Duration) (ratio, age float64) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bb := be.connect(ctx)
	svc := newService(b, ctx, bb, nil)
	k, err := svc.Create(ctx, keys.CreateParams{Project: "acme", KeyLimits: keys.KeyLimits{RatePerS: 100, Burst: 20}})
	if err != nil {
		b.Fatal(err)
	}
	secret := k.Secret.Reveal()
	var rvs []*runningVerifier
	for i := range 4 {
		rv := startVerifier(b, be.connect(ctx), RunConfig{VerifierID: "v" + string(rune('0'+i)), ShareRateLimits: share})
		waitOutcome(b, rv, secret, "valid")
		rvs = append(rvs, rv)
	}
	defer func() {
		for _, rv := range rvs {
			_ = rv.stop()
		}
	}()
	time.Sleep(1500 * time.Millisecond) // the buckets drained by waitOutcome refill
	const workers, perWorker = 8, 125   // 1,000 requests/s
	const dur = 5 * time.Second
	var ok, total atomic.Int64
	var rr atomic.Uint64
	client := &http.Client{Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second / perWorker)
			defer tick.Stop()
			for time.Since(start) < dur {
				<-tick.C
				rv := rvs[rr.Add(1)%uint64(len(rvs))]
				req, _ := http.NewRequest("GET", rv.auth+"/x", nil)
				req.Header.Set("Authorization", "Bearer "+secret)
				resp, err := client.Do(req)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				total.Add(1)
				if resp.StatusCode == 200 {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	limit := 100*el + 20
	ratio = float64(ok.Load()) / limit
	var sum, n float64
	for _, rv := range rvs {
		s, c := scrapeSumCount(b, rv.admin, "keymeter_verifier_rate_report_age_seconds")
		sum, n = sum+s, n+c
	}
	if n > 0 {
		age = sum / n
	}
	b.Logf("share=%s: %d of %d requests admitted in %.2f s; one verifier's limit %.0f: ratio %.3f; %0.f reports received, mean age %.1f ms",
		share, ok.Load(), total.Load(), el, limit, ratio, n, age*1e3)
	return ratio, age
}

// scrapeSumCount reads a histogram's _sum and _count from a verifier's
// /metrics (0, 0 when it has none).
func scrapeSumCount(b *testing.B, admin, name string) (sum, count float64) {
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+"_sum "); ok {
			sum, _ = strconv.ParseFloat(v, 64)
		}
		if v, ok := strings.CutPrefix(line, name+"_count "); ok {
			count, _ = strconv.ParseFloat(v, 64)
		}
	}
	return sum, count
}

// TestRateShareDropsStaleAndInvalidReports: over a real bus, a peer's
// fresh report is charged; the verifier's own, one stamped long ago (a
// backlog handed over after a reconnect), one from a clock far ahead, an
// undecodable one and one cut short are not (the cut one not even in
// part), and each is counted.
func TestRateShareDropsStaleAndInvalidReports(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := startNATS(t).connect(ctx)
	tr := b.RateTransport()
	st := &keymeterv1.KeyState{Id: "key_rl", Project: "proj_rl", Status: keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, Hash: make([]byte, 32),
		Env: "live", Version: 1, RateLimitPerS: 100, RateLimitBurst: 20}
	val, err := proto.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := keys.NewTable(keys.TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tbl.Apply([]bus.KeyUpdate{{ID: "key_rl", Value: val}, {EndOfSnapshot: true}})
	rs, err := NewRateShare(tbl, tr, "me", 50*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The stale reports are a minute off; the fresh one must not age past
	// the default 250 ms between its stamp and its delivery, which a
	// loaded machine can exceed.
	rs.staleAfter = 30 * time.Second
	stop, err := tr.SubscribeRates(ctx, rs.receive)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	report := func(from string, n uint64) []byte {
		d := binary.AppendUvarint(nil, uint64(len(from)))
		d = append(d, from...)
		d = binary.AppendUvarint(d, uint64(len("key_rl")))
		d = append(d, "key_rl"...)
		return binary.AppendUvarint(d, n)
	}
	now := time.Now()
	cut := append(report("peer", 7), 9, 'k') // a second entry cut short
	for _, r := range []bus.RateReport{
		{Data: report("me", 1000), Time: now},
		{Data: report("peer", 1000), Time: now.Add(-time.Minute)},
		{Data: report("peer", 1000), Time: now.Add(time.Minute)},
		{Data: []byte{0xff, 0xff, 0xff}, Time: now},
		{Data: cut, Time: now},
		{Data: report("peer", 3), Time: now}, // the one charged, last
	} {
		if err := tr.PublishRates(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for ctx.Err() == nil && rs.received.Load()+rs.stale.Load()+rs.invalid.Load() < 5 {
		time.Sleep(5 * time.Millisecond)
	}
	_, received, charged := rs.Stats()
	if received != 1 || charged != 3 || rs.stale.Load() != 2 || rs.invalid.Load() != 2 {
		t.Errorf("received %d reports, charged %d admissions, %d stale, %d invalid; want 1, 3, 2, 2",
			received, charged, rs.stale.Load(), rs.invalid.Load())
	}
	// 3 admissions at 100/s: 30ms ahead of the time charged; a stale 1000
	// would be capped at twice the capacity, 400ms.
	if ahead := time.Duration(tbl.SlotByID("key_rl").RateTAT.Load() - time.Now().UnixNano()); ahead > 200*time.Millisecond {
		t.Errorf("bucket charged %v ahead, want at most 30ms", ahead)
	}
}
