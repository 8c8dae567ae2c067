package natsbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/ctxtime"
)

// Partition leases (ConsumerConfig.LeaseTTL): the live members of a group
// share its partitions the way a Kafka consumer group does, with the same
// notion of a generation, so that the aggregator fences them the same way.
//
// One key of the bucket <prefix>_leases, "<group>.table", holds the group's
// assignment (partition -> member) and its generation; every change of
// owners raises the generation and is written with compare-and-set on the
// key's revision, so two members never read the same generation with
// different owners. Each member heartbeats its key "<group>.alive.<id>"; a
// member whose key did not change for a TTL is dead (lease_alive.go). Each member, on every tick, takes free partitions (unowned or
// of a dead member) while it holds fewer than ceil(P/live) and releases
// what it holds beyond that, so a new member gets its share from the
// others. A member follows the table's generation: it rebinds the
// partitions it owns (at their ack floor) and reports the generation and
// its partitions through Generation and Assigned.

// leaseTable is the group's assignment.
type leaseTable struct {
	Gen   int64          `json:"gen"`
	Owner map[int]string `json:"owner"`
}

type leaseConsumer struct {
	b       *Bus
	cfg     bus.ConsumerConfig
	kv      jetstream.KeyValue
	id      string
	ttl     time.Duration
	runCtx  context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	closeMu sync.Once

	mu    sync.Mutex
	next  *leaseTable // newest table read; applied by Fetch
	bump  bool        // a partition was lost: raise the generation so all rebind
	gen   int64       // generation of the deliveries Fetch returns
	owned []int
	cur   *consumer // the bound partitions; nil when none
	bind  uint64    // raised whenever cur is closed

	beats  []beat           // loop only: this member's recent heartbeats
	stream jetstream.Stream // loop only: the bucket's stream, for purges

	bindFailing bool // Fetch only: the last bind failed
}

// newLeaseConsumer joins group cfg.Group's leases; the partitions come
// once the first tick has taken some.
func (b *Bus) newLeaseConsumer(ctx context.Context, cfg bus.ConsumerConfig) (bus.Consumer, error) {
	if len(cfg.Partitions) > 0 {
		return nil, errors.New("natsbus: partition leases and fixed partitions exclude each other")
	}
	if strings.ContainsAny(cfg.Group, ".*> ") {
		return nil, fmt.Errorf("natsbus: consumer group %q: leases need a group name without '.', '*', '>' or spaces", cfg.Group)
	}
	kv, err := b.ensureKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: b.cfg.Prefix + "_leases", History: 1, Storage: jetstream.FileStorage,
		Replicas: b.cfg.Replicas, Description: "keymeter partition leases of consumer groups",
	})
	if err != nil {
		return nil, fmt.Errorf("natsbus: create key-value bucket %s_leases: %w", b.cfg.Prefix, err)
	}
	var raw [8]byte
	_, _ = rand.Read(raw[:])
	runCtx, cancel := context.WithCancel(context.Background())
	c := &leaseConsumer{b: b, cfg: cfg, kv: kv, id: hex.EncodeToString(raw[:]), ttl: cfg.LeaseTTL,
		runCtx: runCtx, cancel: cancel, done: make(chan struct{})}
	go c.loop()
	return c, nil
}

func (c *leaseConsumer) tableKey() string { return c.cfg.Group + ".table" }
func (c *leaseConsumer) aliveKey(id string) string {
	return c.cfg.Group + ".alive." + id
}

// loop heartbeats and rebalances every TTL/5 until Close.
func (c *leaseConsumer) loop() {
	defer close(c.done)
	for c.runCtx.Err() == nil {
		ctx, cancel := context.WithTimeout(c.runCtx, c.ttl)
		if err := c.tick(ctx); err != nil && c.runCtx.Err() == nil {
			c.b.log.Warn("nats leases: tick failed", "group", c.cfg.Group, "err", err)
		}
		cancel()
		_ = ctxtime.Sleep(c.runCtx, c.ttl/5)
	}
}

// tick heartbeats, reads who is alive and the table, takes or releases
// partitions, and hands the newest table to Fetch.
func (c *leaseConsumer) tick(ctx context.Context) error {
	if c.b.paused != nil && c.b.paused.Load() {
		return nil // see WithLeasePause
	}
	if err := c.heartbeat(ctx); err != nil {
		return err
	}
	live, stale, err := c.liveMembers(ctx)
	if err != nil {
		return err
	}
	defer c.purgeStale(ctx, stale) // after the table: takeovers first
	t, rev, err := c.readTable(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	bump := c.bump
	c.bump = false
	c.mu.Unlock()
	if owner, changed := rebalance(t.Owner, c.id, live, c.b.cfg.Partitions); changed || bump {
		nt := leaseTable{Gen: t.Gen + 1, Owner: owner}
		if err := c.writeTable(ctx, nt, rev); err != nil {
			if bump {
				c.mu.Lock()
				c.bump = true
				c.mu.Unlock()
			}
			if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyNotFound) || isWrongSeq(err) {
				return nil // another member wrote first: next tick
			}
			return err
		}
		t = nt
	}
	c.mu.Lock()
	if t.Gen != c.gen && (c.next == nil || t.Gen > c.next.Gen) {
		c.next = &t
	}
	c.mu.Unlock()
	return nil
}

func isWrongSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

func (c *leaseConsumer) readTable(ctx context.Context) (leaseTable, uint64, error) {
	e, err := c.kv.Get(ctx, c.tableKey())
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return leaseTable{Owner: map[int]string{}}, 0, nil
	}
	if err != nil {
		return leaseTable{}, 0, err
	}
	var t leaseTable
	if err := json.Unmarshal(e.Value(), &t); err != nil {
		return leaseTable{}, 0, fmt.Errorf("natsbus: lease table %s: %w", c.tableKey(), err)
	}
	if t.Owner == nil {
		t.Owner = map[int]string{}
	}
	return t, e.Revision(), nil
}

// writeTable writes t if the table is still at revision rev.
func (c *leaseConsumer) writeTable(ctx context.Context, t leaseTable, rev uint64) error {
	v, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if rev == 0 {
		_, err = c.kv.Create(ctx, c.tableKey(), v)
	} else {
		_, err = c.kv.Update(ctx, c.tableKey(), v, rev)
	}
	return err
}

// rebalance is self's move on the table owner: it takes free partitions
// (unowned, or owned by a member not live) while it holds fewer than
// ceil(parts/live), and releases its highest partitions beyond that.
func rebalance(owner map[int]string, self string, live map[string]bool, parts int) (map[int]string, bool) {
	quota := (parts + len(live) - 1) / len(live)
	out := make(map[int]string, len(owner))
	var mine []int
	for p, o := range owner {
		if p < 0 || p >= parts || !live[o] {
			continue
		}
		out[p] = o
		if o == self {
			mine = append(mine, p)
		}
	}
	sort.Ints(mine)
	for len(mine) > quota {
		delete(out, mine[len(mine)-1])
		mine = mine[:len(mine)-1]
	}
	for p := 0; p < parts && len(mine) < quota; p++ {
		if _, taken := out[p]; !taken {
			out[p] = self
			mine = append(mine, p)
		}
	}
	changed := len(out) != len(owner)
	for p, o := range out {
		if owner[p] != o {
			changed = true
		}
	}
	return out, changed
}

// Generation is the lease table's generation of the last Fetch's
// deliveries (0 before the member holds any table).
func (c *leaseConsumer) Generation() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// Assigned is this member's partitions in that generation.
func (c *leaseConsumer) Assigned() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.owned)
}

// apply follows the newest table read: it unbinds the partitions of the
// old generation and binds (at their ack floor) those of the new one.
func (c *leaseConsumer) apply(ctx context.Context) error {
	c.mu.Lock()
	t := c.next
	c.mu.Unlock()
	if t == nil {
		return nil
	}
	var owned []int
	for p, o := range t.Owner {
		if o == c.id {
			owned = append(owned, p)
		}
	}
	sort.Ints(owned)
	c.unbind()
	if len(owned) > 0 {
		bc := c.cfg
		bc.Partitions, bc.LeaseTTL = owned, 0
		cons, err := c.b.NewConsumer(ctx, bc)
		if err != nil {
			return err // the table stays next: the next Fetch tries again
		}
		c.cur = cons.(*consumer)
	}
	c.mu.Lock()
	c.gen, c.owned = t.Gen, owned
	if c.next == t {
		c.next = nil
	}
	c.mu.Unlock()
	c.b.log.Info("nats leases: generation", "group", c.cfg.Group, "member", c.id, "generation", t.Gen, "partitions", owned)
	return nil
}

func (c *leaseConsumer) Fetch(ctx context.Context, max int, wait time.Duration) ([]bus.Delivery, error) {
	select {
	case <-c.runCtx.Done():
		return nil, bus.ErrClosed
	default:
	}
	if err := c.apply(ctx); err != nil {
		if !c.bindFailing { // logged once per failure, not per try
			c.b.log.Warn("nats leases: cannot bind the partitions of the new generation, retrying", "group", c.cfg.Group, "err", err)
			c.bindFailing = true
		}
		_ = ctxtime.Sleep(ctx, min(wait, time.Second))
		return nil, nil
	}
	if c.bindFailing {
		c.b.log.Info("nats leases: partitions bound again", "group", c.cfg.Group)
		c.bindFailing = false
	}
	if c.cur == nil {
		_ = ctxtime.Sleep(ctx, wait)
		return nil, nil
	}
	ds, err := c.cur.Fetch(ctx, max, wait)
	if errors.Is(err, bus.ErrConsumerLost) {
		// A partition was taken over (its new owner bound it) or gave
		// itself up: stop reading all of them and have the group move to
		// a new generation, in which they are bound again.
		c.b.log.Info("nats leases: partition lost; waiting for the next generation", "group", c.cfg.Group, "err", err)
		c.unbind()
		c.mu.Lock()
		c.bump = true
		c.mu.Unlock()
		return nil, nil
	}
	c.mu.Lock()
	bind := c.bind
	c.mu.Unlock()
	for i := range ds {
		ds[i].Ref = leaseRef{msg: ds[i].Ref.(jetstream.Msg), bind: bind}
	}
	return ds, err
}

// leaseRef is the Ref of a delivery: the message and the binding it came
// through.
type leaseRef struct {
	msg  jetstream.Msg
	bind uint64
}

// Ack acknowledges d if the binding it came through is still current. Of
// one unbound since, the ack is lost, which means redelivery to the
// partition's owner, never loss: the aggregator skips what the store holds.
func (c *leaseConsumer) Ack(ctx context.Context, d bus.Delivery) error {
	ref, ok := d.Ref.(leaseRef)
	if !ok {
		return errors.New("natsbus: ack of a delivery this consumer did not make")
	}
	c.mu.Lock()
	stale := ref.bind != c.bind
	c.mu.Unlock()
	if stale {
		return nil
	}
	d.Ref = ref.msg
	actx, cancel := context.WithTimeout(ctx, c.ttl)
	defer cancel()
	err := (&consumer{}).Ack(actx, d)
	if err != nil {
		// The partition's new owner may have rebound it (deleting this
		// binding) before this member read the new table.
		c.mu.Lock()
		moved := c.next != nil || ref.bind != c.bind
		c.mu.Unlock()
		if moved {
			return nil
		}
	}
	return err
}

// unbind closes the bound partitions; the caller is Fetch or Close.
func (c *leaseConsumer) unbind() {
	if c.cur == nil {
		return
	}
	c.mu.Lock()
	c.bind++
	c.mu.Unlock()
	_ = c.cur.Close(context.Background())
	c.cur = nil
}

// Close stops reading and gives up this member's leases at once (a member
// that dies without Close loses them after the TTL).
func (c *leaseConsumer) Close(ctx context.Context) error {
	c.closeMu.Do(func() {
		c.cancel()
		<-c.done
		c.unbind()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		c.forget(rctx)
		for range 3 {
			t, rev, err := c.readTable(rctx)
			if err != nil {
				return
			}
			out := map[int]string{}
			for p, o := range t.Owner {
				if o != c.id {
					out[p] = o
				}
			}
			if len(out) == len(t.Owner) || c.writeTable(rctx, leaseTable{Gen: t.Gen + 1, Owner: out}, rev) == nil {
				return
			}
		}
	})
	return nil
}
