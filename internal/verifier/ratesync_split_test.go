package verifier

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
)

// collectReports subscribes to tr and keeps a copy of every report.
type collectReports struct {
	mu   sync.Mutex
	got  [][]byte
	stop func()
}

func collect(ctx context.Context, t *testing.T, tr bus.RateTransport) *collectReports {
	t.Helper()
	c := &collectReports{}
	var err error
	if c.stop, err = tr.SubscribeRates(ctx, func(r bus.RateReport) {
		c.mu.Lock()
		c.got = append(c.got, append([]byte(nil), r.Data...))
		c.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stop)
	return c
}

// decode decodes each report on its own and returns every key's count,
// the reports and the largest report's size; a key in two reports or a
// report that does not decode is an error.
func (c *collectReports) decode(t *testing.T) (counts map[string]uint64, reports, largest int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	counts = map[string]uint64{}
	for i, d := range c.got {
		largest = max(largest, len(d))
		from, rest, ok := reportString(d)
		if !ok || from != "me" || !eachCount(rest, func(k string, n uint64) {
			if _, dup := counts[k]; dup {
				t.Errorf("key %s in two reports", k)
			}
			counts[k] = n
		}) {
			t.Fatalf("report %d (%d bytes) does not decode on its own (from %q)", i, len(d), from)
		}
	}
	return counts, len(c.got), largest
}

// TestRateShareSplitsLargeReport: a period's counts of more keys than fit
// in one bus message (40,000 keys, about 1.3 MB, on Kafka; 300,000, about
// 10 MB, over the embedded NATS server's 8 MiB max_payload) are published
// as several reports, each within the transport's MaxReportBytes and
// decodable on its own, that together carry every key's count exactly
// once. Before the split, the single report failed to publish ("Message
// Size Too Large", "maximum payload exceeded") and nothing was shared.
func TestRateShareSplitsLargeReport(t *testing.T) {
	backends(t, false, func(t *testing.T, be testBackend) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		n := 300_000
		if _, kafka := be.(*testKafka); kafka {
			n = 40_000
		}
		tr := be.connect(ctx).RateTransport()
		c := collect(ctx, t, tr)
		tbl, err := keys.NewTable(keys.TableConfig{})
		if err != nil {
			t.Fatal(err)
		}
		rs, err := NewRateShare(tbl, tr, "me", time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		var want uint64
		for i := range n {
			for range 1 + i%3 {
				rs.Note(fmt.Sprintf("key_%026d", i))
				want++
			}
		}
		if err := rs.Flush(ctx); err != nil {
			t.Fatalf("report of %d keys not published: %v", n, err)
		}
		for ctx.Err() == nil {
			if got, _, _ := c.decode(t); len(got) >= n {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		got, reports, largest := c.decode(t)
		var sum uint64
		for i := range n {
			k := fmt.Sprintf("key_%026d", i)
			if got[k] != uint64(1+i%3) {
				t.Fatalf("key %s: count %d, want %d", k, got[k], 1+i%3)
			}
			sum += got[k]
		}
		t.Logf("%d keys, %d admissions: %d reports, largest %d bytes (limit %d)", n, want, reports, largest, tr.MaxReportBytes())
		if sum != want || len(got) != n || reports < 2 || largest > tr.MaxReportBytes() {
			t.Errorf("%d keys, %d admissions in %d reports (largest %d bytes, limit %d); want %d keys, %d admissions, several reports",
				len(got), sum, reports, largest, tr.MaxReportBytes(), n, want)
		}
		if sent, _, _ := rs.Stats(); sent != want || rs.published.Load() != uint64(reports) || rs.failed.Load() != 0 {
			t.Errorf("stats: %d admissions sent, %d reports published, %d failed; want %d, %d, 0",
				sent, rs.published.Load(), rs.failed.Load(), want, reports)
		}
	})
}

// smallReports is a real transport with a lower MaxReportBytes, to split
// a small report.
type smallReports struct {
	bus.RateTransport
	max int
}

func (s smallReports) MaxReportBytes() int { return s.max }

// rateTable is a key table with n keys limited to 100/s (burst 20).
func rateTable(t *testing.T, n int) (*keys.Table, []string) {
	t.Helper()
	tbl, err := keys.NewTable(keys.TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	var ups []bus.KeyUpdate
	for i := range n {
		id := fmt.Sprintf("key_rl_%04d", i)
		h := make([]byte, 32)
		binary.BigEndian.PutUint32(h, uint32(i+1))
		val, err := proto.Marshal(&keymeterv1.KeyState{Id: id, Project: "p", Status: keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, Hash: h,
			Env: "live", Version: 1, RateLimitPerS: 100, RateLimitBurst: 20})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		ups = append(ups, bus.KeyUpdate{ID: id, Value: val})
	}
	tbl.Apply(append(ups, bus.KeyUpdate{EndOfSnapshot: true}))
	return tbl, ids
}

// TestRateShareLostReportLosesOnlyItsKeys: a period's counts split into
// several reports over NATS; a peer handed all of them but one charges
// every key but that report's, each by its count: no report depends on
// another.
func TestRateShareLostReportLosesOnlyItsKeys(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr := startNATS(t).connect(ctx).RateTransport()
	c := collect(ctx, t, tr)
	tbl, ids := rateTable(t, 300)
	rs, err := NewRateShare(tbl, smallReports{tr, 1024}, "me", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		rs.Note(id)
		rs.Note(id)
	}
	if err := rs.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for ctx.Err() == nil {
		if got, _, _ := c.decode(t); len(got) >= len(ids) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, reports, largest := c.decode(t); reports < 3 || largest > 1024 {
		t.Fatalf("%d reports, largest %d bytes; want at least 3 of at most 1024", reports, largest)
	}
	peerTbl, _ := rateTable(t, 300)
	peer, err := NewRateShare(peerTbl, tr, "peer", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	lost := c.got[1]
	for i, d := range c.got {
		if i != 1 {
			peer.receive(bus.RateReport{Data: d, Time: time.Now()})
		}
	}
	c.mu.Unlock()
	inLost := map[string]bool{}
	_, rest, _ := reportString(lost)
	eachCount(rest, func(k string, _ uint64) { inLost[k] = true })
	now := time.Now().UnixNano()
	for _, id := range ids {
		ahead := time.Duration(peerTbl.SlotByID(id).RateTAT.Load() - now)
		charged := ahead > 0
		if charged == inLost[id] || ahead > 20*time.Millisecond {
			t.Errorf("key %s (in the lost report: %v): bucket %v ahead; want about 20ms (2 admissions at 100/s) unless lost",
				id, inLost[id], ahead)
		}
	}
	if _, _, charged := peer.Stats(); charged != uint64(2*(len(ids)-len(inLost))) {
		t.Errorf("peer charged %d admissions, want %d", charged, 2*(len(ids)-len(inLost)))
	}
}

// TestRateShareCountsFailedReports: reports that cannot be published (the
// bus is closed) are counted in keymeter_verifier_rate_reports_failed_total,
// and Flush says how many of how many failed.
func TestRateShareCountsFailedReports(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := startNATS(t).connect(ctx)
	tbl, ids := rateTable(t, 100)
	rs, err := NewRateShare(tbl, smallReports{b.RateTransport(), 512}, "me", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := rs.register(reg); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		rs.Note(id)
	}
	err = rs.Flush(ctx)
	t.Logf("flush: %v", err)
	failed := rs.failed.Load()
	if err == nil || failed < 2 || rs.published.Load() != 0 {
		t.Fatalf("flush over a closed bus: err %v, %d reports failed, %d published; want an error, several failed", err, failed, rs.published.Load())
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var metric float64 = -1
	for _, mf := range mfs {
		if mf.GetName() == "keymeter_verifier_rate_reports_failed_total" {
			metric = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if metric != float64(failed) {
		t.Errorf("keymeter_verifier_rate_reports_failed_total = %v, want %d", metric, failed)
	}
}

// TestRateShareChargeSaturates: whatever count a peer reports (up to
// 2^64-1, a malformed or hostile report), charging a key never moves its
// bucket's TAT backwards and never past twice the bucket's capacity ahead,
// and the limiter still refuses the key afterwards; for a slow limit (one
// a minute) the charge's multiplication used to overflow and hand the key
// its whole burst back.
func TestRateShareChargeSaturates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr := startNATS(t).connect(ctx).RateTransport()
	tbl, err := keys.NewTable(keys.TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	limits := map[string][2]float64{ // rate per s, burst
		"key_fast": {100, 20}, "key_minute": {1.0 / 60, 5}, "key_slowest": {1e-9, 0}, "key_wide": {1.0 / 60, math.MaxUint32},
	}
	var ups []bus.KeyUpdate
	for id, l := range limits {
		h := make([]byte, 32)
		copy(h, id)
		val, err := proto.Marshal(&keymeterv1.KeyState{Id: id, Project: "p", Status: keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, Hash: h,
			Env: "live", Version: 1, RateLimitPerS: l[0], RateLimitBurst: uint32(l[1])})
		if err != nil {
			t.Fatal(err)
		}
		ups = append(ups, bus.KeyUpdate{ID: id, Value: val})
	}
	tbl.Apply(append(ups, bus.KeyUpdate{EndOfSnapshot: true}))
	rs, err := NewRateShare(tbl, tr, "me", 50*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	for id := range limits {
		slot := tbl.SlotByID(id)
		rec := slot.Record()
		window := 2 * float64(rec.RateInterval) * float64(max(rec.Burst, 1))
		prev := slot.RateTAT.Load()
		for _, n := range []uint64{5, 1 << 31, 1<<31 + 1, 1 << 32, 1 << 62, 1 << 63, math.MaxUint64} {
			now := time.Now()
			d := binary.AppendUvarint(nil, 4)
			d = append(d, "peer"...)
			d = binary.AppendUvarint(d, uint64(len(id)))
			d = append(d, id...)
			rs.receive(bus.RateReport{Data: binary.AppendUvarint(d, n), Time: now})
			tat := slot.RateTAT.Load()
			if tat < prev || float64(tat-now.UnixNano()) > window+float64(time.Second) || tat > math.MaxInt64-rec.RateInterval {
				t.Errorf("%s (interval %d, burst %d): a charge of %d moved the TAT from %d to %d (now %d, window %.0f ns)",
					id, rec.RateInterval, rec.Burst, n, prev, tat, now.UnixNano(), window)
			}
			prev = tat
			if ok, _, _, _ := gcra(&slot.RateTAT, time.Now().UnixNano(), rec.RateInterval, rec.Burst); ok && n >= 1<<31 {
				t.Errorf("%s: admitted after a charge of %d", id, n)
			}
		}
	}
}
