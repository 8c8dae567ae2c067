package natsbus

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
)

// TestLeaseZombieCutOff: a member that stops heartbeating but still reads
// its partitions (a paused process) loses them to a live member after the
// TTL, and from then on every batch of those partitions reaches the new
// owner. The old code let the new owner reuse the durable consumers, which
// the zombie still pulled from: the zombie got the first batches after
// the takeover and the new owner's AckAll of later ones acknowledged them
// unprocessed (the lease test's 21 lost batches in CI).
func TestLeaseZombieCutOff(t *testing.T) {
	const parts, ttl, n = 2, 500 * time.Millisecond, 10
	srv := testServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var paused atomic.Bool
	newBus := func(opts ...Option) *Bus {
		b, err := New(ctx, Config{Prefix: "zombie", Partitions: parts}, append(opts, WithEmbedded(srv))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close(context.Background()) })
		return b
	}
	prod, a, b := newBus(), newBus(WithLeasePause(&paused)), newBus()
	// One key per partition; a round is n batches of each.
	var keys []string
	for i := 0; len(keys) < parts; i++ {
		if k := fmt.Sprintf("k%d", i); bus.Partition(k, parts) == len(keys) {
			keys = append(keys, k)
		}
	}
	publish := func(round int) {
		for i := range n {
			for _, key := range keys {
				if _, err := prod.Publisher().Publish(ctx, bus.Message{Key: key, BatchID: fmt.Sprintf("r%d-%s-%d", round, key, i), Source: "t", Data: []byte("x")}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := prod.Publisher().Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cfg := bus.ConsumerConfig{Group: "g", LeaseTTL: ttl, AckWait: time.Minute}
	ca, err := a.NewConsumer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(context.Background())
	zombie := ca.(*leaseConsumer)
	// a owns everything, has read and acked a first round, and waits.
	publish(0)
	seen := 0
	for seen < parts*n {
		ds, err := ca.Fetch(ctx, 100, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			seen++
			if err := ca.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := zombie.Assigned(); len(got) != parts {
		t.Fatalf("first member holds %v, want all %d partitions", got, parts)
	}
	paused.Store(true)
	var zmu sync.Mutex
	var stolen []bus.Delivery
	zctx, zcancel := context.WithCancel(ctx)
	defer zcancel()
	go func() { // the zombie keeps reading (and never acks)
		for zctx.Err() == nil {
			ds, _ := ca.Fetch(zctx, 100, 100*time.Millisecond)
			zmu.Lock()
			stolen = append(stolen, ds...)
			zmu.Unlock()
		}
	}()

	cb, err := b.NewConsumer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close(context.Background())
	owner := cb.(*leaseConsumer)
	for len(owner.Assigned()) < parts {
		if _, err := cb.Fetch(ctx, 100, 100*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	stream, err := prod.js.Stream(ctx, prod.streams.events)
	if err != nil {
		t.Fatal(err)
	}
	before := stream.CachedInfo().State.LastSeq
	publish(1)
	got := map[int][]uint64{}
	last := map[int]uint64{}
	for p := range parts {
		m, err := stream.GetLastMsgForSubject(ctx, prod.partitionSubject(p))
		if err != nil {
			t.Fatal(err)
		}
		last[p] = m.Sequence
	}
	// Read until the last batch of every partition came (it does either
	// way); the batches before it must all have come too.
	for done := 0; done < parts; {
		ds, err := cb.Fetch(ctx, 100, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.Position > before && !slices.Contains(got[d.Partition], d.Position) {
				got[d.Partition] = append(got[d.Partition], d.Position)
				if d.Position == last[d.Partition] {
					done++
				}
			}
			if err := cb.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	zcancel()
	zmu.Lock()
	defer zmu.Unlock()
	for _, d := range stolen {
		t.Errorf("the zombie got partition %d position %d after the takeover", d.Partition, d.Position)
	}
	for p := range parts {
		if len(got[p]) != n {
			t.Errorf("partition %d: the new owner got positions %v of the %d published after %d (last %d)", p, got[p], n, before, last[p])
		}
	}
}
