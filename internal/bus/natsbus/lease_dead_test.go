package natsbus

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/testfix/natscluster"
)

// TestLeaseDeadMembersForgotten: members killed without Close (SIGKILL)
// and 1,000 more leftover heartbeat keys neither count as live for a new
// member (its first table already gives it every partition) nor stay in
// the bucket (purged, no delete markers; older versions' markers purged
// too), and Close leaves nothing behind either. The old code counted every leftover live for a TTL (the new
// member's first table gave it nothing), read each with a Get on every
// tick, and never removed them (outside review 16b, finding 5: 6 keys
// after 5 kills). On the embedded server and on a cluster of Debian's
// nats-server (2.9) with 3 replicas, the two servers keymeter runs on.
func TestLeaseDeadMembersForgotten(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		srv := testServer(t)
		testDeadMembersForgotten(t, 5, Config{Prefix: "dead"}, WithEmbedded(srv))
	})
	t.Run("debian-cluster", func(t *testing.T) {
		c := natscluster.New(t)
		testDeadMembersForgotten(t, 2, Config{URL: c.URLs(), Prefix: "dead", Replicas: 3}) // a member takes ~2s to bind here
		testPurgeKeepsNewerBeat(t, Config{URL: c.URLs(), Prefix: "purge", Replicas: 3})
	})
}

func testDeadMembersForgotten(t *testing.T, dead int, bc Config, opts ...Option) {
	const parts, ttl, leftovers = 4, 500 * time.Millisecond, 1000
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	bc.Partitions = parts
	b, err := New(ctx, bc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	cfg := bus.ConsumerConfig{Group: "g", LeaseTTL: ttl, AckWait: time.Minute}
	t0 := time.Now()
	for range dead {
		lc := newLeaseMember(ctx, t, b, cfg)
		ownAll(ctx, t, lc, parts)
		// SIGKILL: heartbeats stop, nothing is cleaned up.
		lc.cancel()
		<-lc.done
		lc.unbind()
	}
	kv, err := b.js.KeyValue(ctx, "dead_leases")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d members killed in %v", dead, time.Since(t0))
	for i := range leftovers {
		if _, err := kv.Put(ctx, fmt.Sprintf("g.alive.left%04d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 { // the delete markers an older version's Close left
		if err := kv.Delete(ctx, fmt.Sprintf("g.alive.closed%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * ttl) // every leftover is now more than a TTL old
	t0 = time.Now()
	probe := &leaseConsumer{b: b, cfg: cfg, kv: kv}
	es, err := probe.listAlive(ctx) // the killed members may have purged their predecessors' keys
	if err != nil || len(es) < leftovers {
		t.Fatalf("listed %d heartbeat keys, %v; want at least %d", len(es), err, leftovers)
	}
	t.Logf("one listing of %d heartbeat keys took %v (lease TTL %v)", len(es), time.Since(t0), ttl)
	lc := newLeaseMember(ctx, t, b, cfg)
	start := time.Now()
	for lc.Generation() == 0 {
		if _, err := lc.Fetch(ctx, 10, 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if got := lc.Assigned(); len(got) != parts {
		t.Errorf("first generation %d gives the new member %v, want all %d partitions: leftovers counted as live", lc.Generation(), got, parts)
	}
	t.Logf("new member with %d leftover keys: first generation (partitions bound) after %v", len(es), time.Since(start))
	for {
		n, err := heartbeatMessages(ctx, kv)
		if err != nil {
			t.Fatalf("heartbeat keys: %v", err)
		}
		if n == 1 { // the live member's
			break
		}
		if _, err := lc.Fetch(ctx, 10, 50*time.Millisecond); err != nil {
			t.Fatalf("%v; %d heartbeat keys left, want 1 (the live member's)", err, n)
		}
	}
	t.Logf("leftovers purged %v after the new member started", time.Since(start))
	if err := lc.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := heartbeatMessages(ctx, kv); n != 0 || err != nil {
		t.Errorf("after Close: %d heartbeat messages (keys or delete markers), %v; want 0", n, err)
	}
}

func newLeaseMember(ctx context.Context, t *testing.T, b *Bus, cfg bus.ConsumerConfig) *leaseConsumer {
	t.Helper()
	c, err := b.NewConsumer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c.(*leaseConsumer)
}

func ownAll(ctx context.Context, t *testing.T, c *leaseConsumer, parts int) {
	t.Helper()
	for len(c.Assigned()) < parts {
		if _, err := c.Fetch(ctx, 10, 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
}

// heartbeatMessages counts the messages under group g's heartbeat keys,
// delete and purge markers included.
func heartbeatMessages(ctx context.Context, kv jetstream.KeyValue) (int, error) {
	w, err := kv.Watch(ctx, "g.alive.*", jetstream.MetaOnly())
	if err != nil {
		return 0, err
	}
	defer func() { _ = w.Stop() }()
	n := 0
	for {
		select {
		case e := <-w.Updates():
			if e == nil {
				return n, nil
			}
			n++
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
}

// TestLeasePurgeKeepsNewerBeat: the purge of a stale heartbeat key removes
// only what is up to the revision read, so a member that beat again since
// keeps its key; and it leaves no marker. (On Debian's nats-server 2.9 in
// TestLeaseDeadMembersForgotten/debian-cluster.)
func TestLeasePurgeKeepsNewerBeat(t *testing.T) {
	srv := testServer(t)
	testPurgeKeepsNewerBeat(t, Config{Prefix: "purge"}, WithEmbedded(srv))
}

func testPurgeKeepsNewerBeat(t *testing.T, cfg Config, opts ...Option) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b, err := New(ctx, cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "g", LeaseTTL: time.Hour, AckWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	lc := cons.(*leaseConsumer)
	if err := lc.Close(ctx); err != nil { // only its bucket and methods are used below
		t.Fatal(err)
	}
	r1, err := lc.kv.Put(ctx, lc.aliveKey("x"), []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := lc.kv.Put(ctx, lc.aliveKey("x"), []byte("2"))
	if err != nil {
		t.Fatal(err)
	}
	lc.purgeStale(ctx, []aliveEntry{{id: "x", rev: r1}}) // read at r1; x beat again since
	if e, err := lc.kv.Get(ctx, lc.aliveKey("x")); err != nil || e.Revision() != r2 {
		t.Fatalf("after the purge up to revision %d: %v, %v; want the newer beat %d kept", r1, e, err, r2)
	}
	lc.purgeStale(ctx, []aliveEntry{{id: "x", rev: r2}})
	if _, err := lc.kv.Get(ctx, lc.aliveKey("x")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("after the purge up to revision %d: %v, want the key gone", r2, err)
	}
	if n, err := heartbeatMessages(ctx, lc.kv); n != 0 || err != nil {
		t.Fatalf("%d heartbeat messages left, %v; want none (no marker)", n, err)
	}
}
