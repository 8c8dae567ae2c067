package keys

import (
	"context"
	"errors"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bench/proc"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

func stateUpdate(t testing.TB, st *keymeterv1.KeyState) bus.KeyUpdate {
	b, err := proto.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return bus.KeyUpdate{ID: st.GetId(), Value: b}
}

func newState(t testing.TB, project string) (*keymeterv1.KeyState, Secret) {
	sec, err := Generate(EnvLive)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := NewID()
	h := sec.Hash()
	return &keymeterv1.KeyState{Id: id, Project: project, Hash: h[:], Env: "live",
		Status: keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, Version: 1}, sec
}

func lookup(tbl *Table, s Secret) *Record {
	h := s.Hash()
	sl := tbl.Lookup(&h)
	if sl == nil {
		return nil
	}
	return sl.Record()
}

func TestTableApply(t *testing.T) {
	tbl, err := NewTable(TableConfig{KeepState: true})
	if err != nil {
		t.Fatal(err)
	}
	a, sa := newState(t, "p1")
	b, sb := newState(t, "p1")
	tbl.Apply([]bus.KeyUpdate{stateUpdate(t, a), stateUpdate(t, b)})
	if lookup(tbl, sa) != nil || tbl.Loaded() {
		t.Fatal("snapshot keys visible before the end of the snapshot")
	}
	tbl.Apply([]bus.KeyUpdate{{EndOfSnapshot: true}})
	if !tbl.Loaded() || tbl.Len() != 2 {
		t.Fatalf("loaded=%v len=%d", tbl.Loaded(), tbl.Len())
	}
	ra, rb := lookup(tbl, sa), lookup(tbl, sb)
	if ra == nil || rb == nil || ra.ID != a.Id || ra.Project != "p1" {
		t.Fatalf("lookup: %+v %+v", ra, rb)
	}
	if ra.Project != rb.Project || unsafeStringData(ra.Project) != unsafeStringData(rb.Project) {
		t.Error("project names are not interned")
	}

	// A live update replaces the record in place and keeps the bucket.
	h := sa.Hash()
	slot := tbl.Lookup(&h)
	slot.RateTAT.Store(42)
	slot.Used.Store(7)
	a.Status, a.Version = keymeterv1.KeyStatus_KEY_STATUS_REVOKED, 2
	tbl.Apply([]bus.KeyUpdate{stateUpdate(t, a)})
	if r := lookup(tbl, sa); r.Status != StatusRevoked || tbl.Lookup(&h) != slot || slot.RateTAT.Load() != 42 || slot.Used.Load() != 7 {
		t.Fatalf("update: %+v", r)
	}
	// A quota update resets the local count.
	a.QuotaUsed, a.Version = 100, 3
	tbl.Apply([]bus.KeyUpdate{stateUpdate(t, a)})
	if slot.Used.Load() != 0 {
		t.Fatal("local quota count not reset by a quota update")
	}
	// Stale versions are ignored.
	a.Status, a.Version = keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, 1
	tbl.Apply([]bus.KeyUpdate{stateUpdate(t, a)})
	if lookup(tbl, sa).Status != StatusRevoked {
		t.Fatal("stale update applied")
	}
	// A concurrent writer's stale copy (same version, status active) does
	// not un-revoke the key, but its other fields apply.
	a.Status, a.Version, a.QuotaUsed = keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, 3, 200
	tbl.Apply([]bus.KeyUpdate{stateUpdate(t, a)})
	if r := lookup(tbl, sa); r.Status != StatusRevoked || r.QuotaUsed != 200 {
		t.Fatalf("stale un-revoke: %+v", r)
	}
	if st, _ := tbl.State(a.Id); st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_REVOKED {
		t.Fatalf("state un-revoked: %v", st)
	}
	// New keys after the snapshot; deletes.
	c, sc := newState(t, "p2")
	tbl.Apply([]bus.KeyUpdate{stateUpdate(t, c), {ID: b.Id, Deleted: true}})
	if lookup(tbl, sc) == nil || lookup(tbl, sb) != nil || tbl.Len() != 2 {
		t.Fatalf("insert/delete: len %d", tbl.Len())
	}
	if _, ok := tbl.State(b.Id); ok {
		t.Fatal("deleted state kept")
	}
	if st, ok := tbl.State(c.Id); !ok || st.GetProject() != "p2" {
		t.Fatal("state not kept")
	}
	// Undecodable and invalid updates are skipped, not fatal.
	tbl.Apply([]bus.KeyUpdate{{ID: "key_bad", Value: []byte{0xff, 0xff}}, stateUpdate(t, &keymeterv1.KeyState{Id: "key_nohash"})})
	if tbl.Invalid() != 2 || tbl.Len() != 2 {
		t.Fatalf("invalid=%d len=%d", tbl.Invalid(), tbl.Len())
	}
}

func TestTableLookupNoAlloc(t *testing.T) {
	tbl, err := NewTable(TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	a, sa := newState(t, "p")
	tbl.Apply([]bus.KeyUpdate{stateUpdate(t, a), {EndOfSnapshot: true}})
	h := sa.Hash()
	if n := testing.AllocsPerRun(100, func() { _ = tbl.Lookup(&h).Record() }); n != 0 {
		t.Fatalf("Lookup allocates %v", n)
	}
}

// startBus starts an in-process embedded NATS and the bus on it.
func startBus(t testing.TB) *natsbus.Bus {
	t.Helper()
	emb, err := natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := natsbus.New(context.Background(), natsbus.Config{}, natsbus.WithEmbedded(emb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = b.Close(ctx)
		emb.Shutdown()
	})
	return b
}

func watched(t testing.TB, kl bus.KeyLog, keep bool) *Table {
	tbl, err := NewTable(TableConfig{KeepState: keep})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = tbl.Run(ctx, kl) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-tbl.Ready():
	case <-time.After(60 * time.Second):
		t.Fatal("table not loaded")
	}
	return tbl
}

func TestServiceLifecycle(t *testing.T) {
	ctx := context.Background()
	b := startBus(t)
	svc, err := NewService(ServiceConfig{KeyLog: b, Table: watched(t, b, true)})
	if err != nil {
		t.Fatal(err)
	}
	// Keys created before a verifier starts arrive in its snapshot.
	early, err := svc.Create(ctx, CreateParams{Project: "acme", Name: "early", Env: "test", Metadata: map[string]string{"team": "x"},
		KeyLimits: KeyLimits{Scopes: []string{"read"}, AllowedCIDRs: []string{"10.0.0.0/8", "192.0.2.1"}, RatePerS: 10, MonthlyQuota: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	if early.Secret.Env() != EnvTest || !strings.HasPrefix(early.Secret.Reveal(), "km_test_") {
		t.Fatalf("env: %v", early.Secret)
	}
	verifier := watched(t, b, false)
	r := lookup(verifier, early.Secret)
	if r == nil || r.Env != EnvTest || !r.HasScope("read") || r.HasScope("write") || r.MonthlyQuota != 1000 || r.RatePerSecond() != 10 || r.Burst != 10 {
		t.Fatalf("snapshot record: %+v", r)
	}
	st, _ := svc.Get(early.State.GetId())
	if st.GetAllowedCidrs()[1] != "192.0.2.1/32" || st.GetDisplayPrefix() != early.Secret.Display() || st.GetMetadata()["team"] != "x" {
		t.Fatalf("state: %v", st)
	}
	for _, f := range [][]byte{st.GetHash()} {
		if strings.Contains(string(f), early.Secret.Reveal()) {
			t.Fatal("secret stored")
		}
	}

	// Later changes reach the running table.
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second) // bounds a failing test only
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	id := early.State.GetId()
	if err := svc.Suspend(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitFor("suspend", func() bool { return lookup(verifier, early.Secret).Status == StatusSuspended })
	if err := svc.Resume(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitFor("resume", func() bool { return lookup(verifier, early.Secret).Status == StatusActive })
	exp := time.Now().Add(time.Hour)
	cidrs := []string{"2001:db8::/32"}
	if err := svc.Update(ctx, id, UpdateParams{ExpiresAt: &exp, AllowedCIDRs: &cidrs}); err != nil {
		t.Fatal(err)
	}
	waitFor("update", func() bool {
		r := lookup(verifier, early.Secret)
		return r.ExpiresAt == exp.UnixNano() && len(r.Limits.CIDRs) == 1 && r.Limits.Scopes[0] == "read"
	})
	if err := svc.Update(ctx, id, UpdateParams{AllowedCIDRs: &[]string{"nonsense"}}); err == nil {
		t.Fatal("invalid CIDR accepted")
	}

	// Rotation: both keys verify; the old one until its grace ends.
	rot, err := svc.Rotate(ctx, id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	waitFor("rotation", func() bool {
		n, o := lookup(verifier, rot.Secret), lookup(verifier, early.Secret)
		return n != nil && o != nil && o.GraceUntil > 0
	})
	nr := lookup(verifier, rot.Secret)
	if rot.State.GetReplaces() != id || nr.ID == id || !nr.HasScope("read") || rot.Secret.Reveal() == early.Secret.Reveal() {
		t.Fatalf("rotated key: %+v", rot.State)
	}
	// A key is rotated once: a second rotation never extends the grace.
	before, _ := svc.Get(id)
	var re *RotatedError
	if _, err := svc.Rotate(ctx, id, 9999*time.Hour); !errors.As(err, &re) || !errors.Is(err, ErrConflict) || re.ReplacedBy != nr.ID {
		t.Fatalf("second rotation: %v", err)
	}
	if after, _ := svc.Get(id); after.GetGraceUntilUnixNano() != before.GetGraceUntilUnixNano() || after.GetReplacedBy() != nr.ID ||
		after.GetVersion() != before.GetVersion() {
		t.Fatalf("second rotation changed the old key: %v", after)
	}

	if err := svc.Revoke(ctx, id, "leaked"); err != nil {
		t.Fatal(err)
	}
	waitFor("revoke", func() bool { return lookup(verifier, early.Secret).Status == StatusRevoked })
	if got, _ := svc.Get(id); got.GetRevokeReason() != "leaked" || got.GetRevokedUnixNano() == 0 {
		t.Fatalf("revoked state: %v", got)
	}
	if err := svc.Resume(ctx, id); err == nil {
		t.Fatal("resumed a revoked key")
	}
	if l := svc.List("acme"); len(l) != 2 {
		t.Fatalf("list: %d keys", len(l))
	}
	if err := svc.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitFor("delete", func() bool { return lookup(verifier, early.Secret) == nil })
	if _, err := svc.Get(id); err == nil {
		t.Fatal("deleted key still listed")
	}
	if _, err := svc.Create(ctx, CreateParams{}); err == nil {
		t.Fatal("key without project created")
	}
}

func unsafeStringData(s string) *byte {
	if s == "" {
		return nil
	}
	return &[]byte(s[:1])[0]
}

// BenchmarkTableLoad1M loads a snapshot of 1,000,000 keys into a table and
// reports the heap it keeps (and the process's resident set).
func BenchmarkTableLoad1M(b *testing.B) {
	const n = 1_000_000
	updates := make([]bus.KeyUpdate, 0, n+1)
	for i := range n {
		st, _ := newState(b, "proj_"+strconv.Itoa(i%1000))
		st.RateLimitPerS, st.MonthlyQuota = 100, 1e6
		updates = append(updates, stateUpdate(b, st))
	}
	updates = append(updates, bus.KeyUpdate{EndOfSnapshot: true})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var tbl *Table
	for b.Loop() {
		var err error
		tbl, err = NewTable(TableConfig{})
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < len(updates); i += maxBatch {
			tbl.Apply(updates[i:min(i+maxBatch, len(updates))])
		}
	}
	b.StopTimer()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(updates)
	updates = nil
	runtime.GC()
	debug.FreeOSMemory()
	tableBytes := float64(after.HeapAlloc - before.HeapAlloc)
	b.ReportMetric(tableBytes/float64(1<<20), "table_heap_mb")
	b.ReportMetric(tableBytes/float64(n), "bytes/key")
	b.ReportMetric(proc.RSSMB(), "rss_mb")
	runtime.KeepAlive(tbl)
}

// BenchmarkTableApply1M: one live update applied to a table of 1,000,000
// keys: a new key (its shard's index is copied) or a revocation (a record
// swap, encoding included). Run with -benchtime 100000x so that every
// "insert" is a new key.
func BenchmarkTableApply1M(b *testing.B) {
	const n = 1_000_000
	tbl, err := NewTable(TableConfig{})
	if err != nil {
		b.Fatal(err)
	}
	updates := make([]bus.KeyUpdate, 0, n+1)
	var states []*keymeterv1.KeyState
	for i := range n {
		st, _ := newState(b, "proj_"+strconv.Itoa(i%1000))
		updates = append(updates, stateUpdate(b, st))
		if i < 1000 {
			states = append(states, st)
		}
	}
	updates = append(updates, bus.KeyUpdate{EndOfSnapshot: true})
	for i := 0; i < len(updates); i += maxBatch {
		tbl.Apply(updates[i:min(i+maxBatch, len(updates))])
	}
	updates = nil
	b.Run("insert", func(b *testing.B) {
		fresh := make([]bus.KeyUpdate, 0, 100_000)
		for range cap(fresh) {
			st, _ := newState(b, "proj_new")
			fresh = append(fresh, stateUpdate(b, st))
		}
		i := 0
		for b.Loop() {
			tbl.Apply(fresh[i%len(fresh) : i%len(fresh)+1])
			i++
		}
	})
	b.Run("revoke", func(b *testing.B) {
		i := 0
		for b.Loop() {
			st := states[i%len(states)]
			st.Version++
			st.Status = keymeterv1.KeyStatus_KEY_STATUS_REVOKED
			u := stateUpdate(b, st)
			tbl.Apply([]bus.KeyUpdate{u})
			i++
		}
	})
}
