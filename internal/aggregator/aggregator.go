// Package aggregator moves usage events from the bus into the store exactly
// once, and keeps per-key quota state.
//
// Exactly once, the way ClickHouse's Kafka Connect sink does it: a
// contiguous range [first, last] of one partition is recorded as an intent
// in the store, inserted as one block whose insert_deduplication_token is
// derived from the range, and only then acknowledged on the bus. After a
// crash the pending intents are replayed first, range for range with the
// same token, so ClickHouse drops the block it already has; deliveries in
// a replayed or completed range are skipped (only those: a fenced member's
// aborted range may lie below one, see checkFloor).
//
// Several live members of one group (Kafka) are fenced by the consumer
// group's generation: a member that enters a generation records it as a
// fence in the store, then replays every pending intent of the group; a
// member that has recorded its intents reads the fence before it inserts
// and, if a newer generation has begun, aborts instead (see store.Fencer).
// Either the new owner of a partition replays an intent under its token or
// the old owner never inserts it. For that, a fenced member inserts one
// partition per insert (token "<group>/e<generation>/<hash>") and replays
// only the partitions the generation assigned to it; a pending intent that
// an intent of a later generation overlaps is dead (its owner was fenced
// before inserting: the later owner read the range from the bus) and is
// aborted rather than replayed.
package aggregator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/ctxtime"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// Store is what the aggregator needs of the store.
type Store interface {
	store.EventWriter
	store.IntentStore
	// Committed is the highest position per partition with an intent.
	Committed(ctx context.Context, consumer string) (map[string]uint64, error)
}

// Bus is what the aggregator needs of the bus.
type Bus interface {
	NewConsumer(ctx context.Context, cfg bus.ConsumerConfig) (bus.Consumer, error)
	bus.RangeReader
	bus.DeadLetters
	bus.Lagger
}

// Config configures an Aggregator.
type Config struct {
	// Group is the consumer group; aggregators of one group share the
	// partitions and each other's intents. Default "aggregator".
	Group string
	// Partitions this instance reads (NATS); empty: all.
	Partitions []int
	// LeaseTTL, when set (NATS), shares the partitions among the group's
	// live aggregators by leases instead of Partitions: a member silent
	// for LeaseTTL loses its partitions to the others, fenced by the
	// lease table's generation as a Kafka group's members are by theirs.
	LeaseTTL time.Duration
	// MaxBlockEvents flushes once this many events are buffered (default 100000).
	MaxBlockEvents int
	// MaxBurstBlockEvents bounds how far blocks grow under a backlog
	// (default 2×MaxBlockEvents; equal to it: no growth). A block that
	// fills while the insert before it still runs means the store is the
	// bottleneck: the next blocks are then larger, which costs the store
	// less per event (measured with chDB: 200k-event inserts about a
	// quarter less CPU per event than 100k), and shrink back once inserts
	// keep up.
	MaxBurstBlockEvents int
	// FlushInterval bounds how long an event waits before it is inserted (default 1s).
	FlushInterval time.Duration
	// AckWait is how long the bus waits for an ack before redelivering (default 30s).
	AckWait time.Duration
	// RetryBackoff is the first wait after a failed insert (default 200ms, doubling to 10s).
	RetryBackoff time.Duration
	// StopWhenIdle, if set, ends Run once nothing arrived for this long and
	// everything consumed is stored (a drain / backfill mode).
	StopWhenIdle time.Duration
	// ShutdownGrace is how long a flush under way, or the final flush, may
	// go on after the run context ends (default 30s).
	ShutdownGrace time.Duration
}

// blockCap is the most events a block holds (at most a batch more).
func (c Config) blockCap() int { return max(c.MaxBlockEvents, c.MaxBurstBlockEvents) }

// LargestBlock is the most events a block holds with c's defaults applied
// (MaxBurstBlockEvents): what memory is sized for.
func (c Config) LargestBlock() int { return c.withDefaults().blockCap() }

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.Group == "" {
		c.Group = "aggregator"
	}
	if c.MaxBlockEvents == 0 {
		c.MaxBlockEvents = 100_000
	}
	if c.MaxBurstBlockEvents == 0 {
		c.MaxBurstBlockEvents = 2 * c.MaxBlockEvents
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = time.Second
	}
	if c.AckWait == 0 {
		c.AckWait = 30 * time.Second
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = 200 * time.Millisecond
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 30 * time.Second
	}
	return c
}

// Validate reports every problem of the configuration (zero fields take
// their defaults); it changes nothing.
func (c *Config) Validate() error {
	d := c.withDefaults()
	var errs []error
	if strings.ContainsAny(d.Group, " .*>/") {
		errs = append(errs, fmt.Errorf("aggregator: group %q: letters, digits, '-' and '_' only", d.Group))
	}
	if d.MaxBlockEvents < 1 {
		errs = append(errs, fmt.Errorf("aggregator: max-block-events %d must be positive", d.MaxBlockEvents))
	}
	if d.MaxBurstBlockEvents < d.MaxBlockEvents {
		errs = append(errs, fmt.Errorf("aggregator: max-burst-block-events %d is below max-block-events %d", d.MaxBurstBlockEvents, d.MaxBlockEvents))
	}
	if d.FlushInterval < 10*time.Millisecond || d.FlushInterval > 10*time.Minute {
		errs = append(errs, fmt.Errorf("aggregator: flush-interval %s out of range 10ms-10m", d.FlushInterval))
	}
	if d.LeaseTTL > 0 && len(d.Partitions) > 0 {
		errs = append(errs, errors.New("aggregator: nats-leases and own-partitions exclude each other"))
	}
	if d.LeaseTTL < 0 || (d.LeaseTTL > 0 && d.LeaseTTL < 100*time.Millisecond) {
		errs = append(errs, fmt.Errorf("aggregator: nats-lease-ttl %s: at least 100ms", d.LeaseTTL))
	}
	for what, v := range map[string]time.Duration{"ack-wait": d.AckWait, "retry-backoff": d.RetryBackoff, "shutdown-grace": d.ShutdownGrace, "stop-when-idle": d.StopWhenIdle} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("aggregator: %s %s is negative", what, v))
		}
	}
	return errors.Join(errs...)
}

// Observer is told about every stored block, e.g. to update quotas. It
// runs after the insert and before the ack.
type Observer interface {
	Stored(ctx context.Context, events []event.Event)
}

// Aggregator consumes event batches into the store.
type Aggregator struct {
	cfg      Config
	bus      Bus
	store    Store
	log      *slog.Logger
	observer Observer
	m        *metrics

	// floor[p] is the highest position of partition p already in a block
	// (inserted or pending); deliveries at or below it are skipped.
	floor  map[int]uint64
	recent *recent // batch ids of recent blocks
	// epoch is the consumer group generation this member consumes in (0:
	// not fenced, NATS); fencer is the store's fencing, set with it.
	epoch  uint64
	fencer store.Fencer
	owned  []int // partitions of this generation
	stats  Stats
	mu     sync.Mutex

	// firstDone[p]: the first block of partition p since it was acquired
	// has been formed (its events are looked up in the store, resent.go).
	firstDone map[int]bool

	// floorChecked[p]: the first delivery of partition p in this
	// generation has been checked against the store (checkFloor); skip[p]
	// are the ranges of p above it the store holds (done intents), which
	// are skipped rather than the whole of [first delivery, floor].
	floorChecked map[int]bool
	skip         map[int][][2]uint64

	// bufs recycles the event slices of flushed blocks and of merged
	// inserts: a block's events are decoded straight into its slice, which
	// after the first flushes is already large enough, so the hot path
	// neither grows slices nor leaves them to the collector (profiled:
	// growslice's copies were a quarter of the pipeline's CPU).
	bufs eventBufs
	// doneLater are intents whose inserts were made and acked but not yet
	// marked done: a live unfenced flush writes them in the next flush's
	// intents INSERT (one statement per flush instead of two), or the loop
	// writes them once the bus is idle and at shutdown. Until then they are
	// pending, and a crash replays them (ClickHouse drops the repeat by its
	// token). Used by one flush at a time, or by the loop with none under way.
	doneLater []store.Intent
	// lastBatch is the events of the last batch decoded, blockHint the
	// largest block of the last flush: the room a block's slice is given.
	// Used by the consuming goroutine only (replays run before it).
	lastBatch, blockHint int
}

// eventBufs is a small free list of event slices (len 0); it holds at most
// 32 and limit events' room in all (a few blocks' worth), and is safe for concurrent use (a flush runs beside the consuming loop).
type eventBufs struct {
	mu    sync.Mutex
	free  [][]event.Event
	limit int // events
}

func (f *eventBufs) get(minCap int) []event.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	best := -1 // the smallest that fits, so a block does not take a merge's room
	for i, b := range f.free {
		if cap(b) >= minCap && (best < 0 || cap(b) < cap(f.free[best])) {
			best = i
		}
	}
	if best >= 0 && cap(f.free[best]) <= 4*minCap+4096 {
		b := f.free[best]
		f.free = append(f.free[:best], f.free[best+1:]...)
		return b
	}
	return make([]event.Event, 0, minCap)
}

// put takes b back; its events are cleared first so that the slice does not
// keep the bus messages they point into alive.
func (f *eventBufs) put(b []event.Event) {
	if cap(b) == 0 {
		return
	}
	clear(b) // past len it is zero: decode clears what it leaves there
	f.mu.Lock()
	defer f.mu.Unlock()
	held := 0
	for _, x := range f.free {
		held += cap(x)
	}
	for len(f.free) > 0 && (len(f.free) >= 32 || held+cap(b) > f.limit) {
		// Drop the oldest: the sizes in use now are the recent ones.
		held -= cap(f.free[0])
		f.free = f.free[1:]
	}
	if cap(b) <= f.limit {
		f.free = append(f.free, b[:0])
	}
}

// Stats are cumulative counts since start.
type Stats struct {
	Events       uint64 // events inserted (including replays the store dropped)
	Blocks       uint64
	DeadLettered uint64
	Replayed     uint64 // intents replayed at start
	Skipped      uint64 // redelivered batches skipped
	Duplicates   uint64 // batches whose id was already stored
	Rebalances   uint64 // consumer group generations entered
	Fenced       uint64 // flushes aborted: a newer generation had begun

	// StoredDuplicates are events dropped because the store held them
	// already (resent batches, replays, first blocks; see resent.go).
	StoredDuplicates uint64
}

// idleWait is how long a fetch waits for more once a block is half full;
// if nothing comes, the block is flushed.
const idleWait = 20 * time.Millisecond

// errFenced: a flush found a newer generation's fence and did not insert.
var errFenced = errors.New("aggregator: fenced by a newer consumer group generation")

// generational is a consumer whose group assigns partitions by generation
// (Kafka); Generation is that of the last Fetch's deliveries.
type generational interface {
	Generation() int64
	Assigned() []int
}

// Option configures New.
type Option func(*Aggregator) error

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(a *Aggregator) error {
		if l == nil {
			return errors.New("aggregator: WithLogger(nil)")
		}
		a.log = l
		return nil
	}
}

// WithObserver sets the observer of stored blocks.
func WithObserver(o Observer) Option {
	return func(a *Aggregator) error {
		if o == nil {
			return errors.New("aggregator: WithObserver(nil)")
		}
		a.observer = o
		return nil
	}
}

// WithRegisterer registers the metrics (default: not registered).
func WithRegisterer(r prometheus.Registerer) Option {
	return func(a *Aggregator) error {
		if r == nil {
			return errors.New("aggregator: WithRegisterer(nil)")
		}
		return a.m.register(r)
	}
}

// New returns an Aggregator; Run starts it.
func New(cfg Config, b Bus, s Store, opts ...Option) (*Aggregator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if b == nil || s == nil {
		return nil, errors.New("aggregator: bus and store are required")
	}
	a := &Aggregator{cfg: cfg, bus: b, store: s, log: slog.Default(), m: newMetrics(), floor: map[int]uint64{}, recent: newRecent(200_000),
		floorChecked: map[int]bool{}, skip: map[int][][2]uint64{}}
	// The free list needs room for the buffer of the last flush (taken by
	// the next block) and a little slack; more only raises the live heap
	// (and with it, twice over, the GC's goal).
	a.bufs.limit = cfg.blockCap() + cfg.blockCap()/4 + 4096
	for _, o := range opts {
		if err := o(a); err != nil {
			return nil, err
		}
	}
	a.log = a.log.With("role", "aggregator", "group", cfg.Group)
	return a, nil
}

// Stats returns the counts so far.
func (a *Aggregator) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stats
}

// evBuf is the events of one or more blocks.
type evBuf struct {
	events []event.Event
	check  storedCheck // events to look up in the store at flush
}

// bufsOf is the distinct bufs of bs, in order.
func bufsOf(bs []*block) []*evBuf {
	var out []*evBuf
	for _, b := range bs {
		if !slices.Contains(out, b.buf) {
			out = append(out, b.buf)
		}
	}
	return out
}

// block is the buffered range of one partition.
type block struct {
	partition   int
	first, last uint64
	lastD       bus.Delivery
	// buf holds the events. Live and unfenced, the blocks of one flush
	// share one buf (they are inserted as one): the insert then takes it
	// as it is, with no copy into a merged slice (profiled: that copy was
	// 4-5% of the pipeline's CPU).
	buf  *evBuf
	hold [][]byte            // delivery bytes the events point into
	ids  map[string]struct{} // batch ids in this block
	// checkAll: the first block of its partition since it was acquired;
	// all its events are looked up in the store (resent.go).
	checkAll bool
}

func partitionName(p int) string { return "events/" + strconv.Itoa(p) }

// Run replays pending intents, then consumes until ctx ends. On the way
// out it flushes what is buffered and acks it (graceful shutdown).
func (a *Aggregator) Run(ctx context.Context) error {
	cons, err := a.bus.NewConsumer(ctx, bus.ConsumerConfig{Group: a.cfg.Group, Partitions: a.cfg.Partitions, AckWait: a.cfg.AckWait, LeaseTTL: a.cfg.LeaseTTL})
	if err != nil {
		return fmt.Errorf("aggregator: %w", err)
	}
	defer cons.Close(context.Background())
	gc, _ := cons.(generational)
	if gc != nil {
		// Replays happen per generation, of the partitions it assigns.
		f, ok := a.store.(store.Fencer)
		if !ok {
			return errors.New("aggregator: this bus's consumer groups rebalance between live members, which needs a store with fencing (store.Fencer)")
		}
		a.fencer = f
	} else if err := a.replay(ctx); err != nil {
		return err
	}
	go a.watchLag(ctx, a.bus)
	a.resetFirstBlocks()
	a.log.Info("aggregator consuming", "flush_interval", a.cfg.FlushInterval, "max_block_events", a.cfg.MaxBlockEvents)

	// Flushes run on a context that outlives ctx by ShutdownGrace, so a
	// shutdown in the middle of a flush still acks what it inserted.
	fctx, fcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer fcancel()
	stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(a.cfg.ShutdownGrace, fcancel) })
	defer stopGrace()

	r := &consumeLoop{a: a, cons: cons, gc: gc, fctx: fctx, fcancel: fcancel, blocks: map[int]*block{},
		deadline: time.Now().Add(a.cfg.FlushInterval), lastSeen: time.Now(), target: a.cfg.MaxBlockEvents}
	defer func() { _ = r.waitFlush() }()
	for {
		if ctx.Err() != nil {
			r.shutdown()
			return nil
		}
		if stop, err := r.step(ctx); stop || err != nil {
			return err
		}
	}
}

// consumeLoop is the state of Run's loop: the blocks being filled and the
// flush under way.
type consumeLoop struct {
	a    *Aggregator
	cons bus.Consumer
	gc   generational // nil when the bus's groups do not rebalance
	// fctx is the context of flushes, which outlives Run's by
	// ShutdownGrace; fcancel ends it at once.
	fctx    context.Context
	fcancel context.CancelFunc

	blocks         map[int]*block
	shared         *evBuf // the buf of the blocks being filled (unfenced)
	buffered       int
	target         int // events that fill a block now: MaxBlockEvents up to MaxBurstBlockEvents (see grow)
	deadline       time.Time
	lastSeen       time.Time
	inflight       chan error // the flush under way, if any
	inflightBlocks map[int]*block
	fenced         bool // a flush was fenced: drop deliveries until the next generation
	eb             event.Batch
	// decodedEvents and decodedMsgs give the events per message.
	decodedEvents, decodedMsgs uint64

	// afterFull: the last flush started was of a full block (a backlog is
	// being drained); its remainder is flushed once the bus is idle.
	afterFull bool

	// lateAcks are skipped deliveries (stored already) to ack once the
	// flush under way has stored its blocks.
	lateAcks []bus.Delivery
}

// forget un-remembers the batch ids of blocks that will not be stored
// here, so that their batches are taken when delivered again.
func (r *consumeLoop) forget(bs map[int]*block) {
	for _, b := range bs {
		for id := range b.ids {
			r.a.recent.remove(id)
		}
	}
}

// waitFlush waits for the flush under way, if any, and returns its error;
// a fenced flush is no error, but drops deliveries until the next
// generation.
func (r *consumeLoop) waitFlush() error {
	if r.inflight == nil {
		return nil
	}
	a := r.a
	err := <-r.inflight
	r.inflight = nil
	late := r.lateAcks
	r.lateAcks = nil
	if errors.Is(err, errFenced) {
		a.log.Info("aggregator: flush fenced by a newer consumer group generation; its partitions are replayed or re-read by their owners")
		a.count(func(s *Stats) { s.Fenced++ })
		r.forget(r.inflightBlocks)
		r.fenced = true
		late = nil
		err = nil
	}
	if err == nil {
		for _, d := range late {
			_ = r.cons.Ack(r.fctx, d)
		}
		for _, b := range r.inflightBlocks {
			if b.buf.events != nil {
				a.bufs.put(b.buf.events)
				b.buf.events = nil
			}
		}
	}
	r.inflightBlocks = nil
	return err
}

// shutdown inserts and acks whatever is buffered, with a bounded grace
// (fctx) so a dead store cannot hold the process.
func (r *consumeLoop) shutdown() {
	a := r.a
	if err := r.waitFlush(); err != nil {
		a.log.Warn("aggregator: flush cut short by shutdown; the bus will redeliver and the intent replays", "err", err)
		return
	}
	if err := a.flush(r.fctx, r.cons, r.blocks, a.epoch); err != nil {
		a.log.Warn("aggregator: final flush failed; the bus will redeliver", "err", err)
	}
	a.clearDone(r.fctx)
}

// step fetches once, takes what was fetched into blocks and starts a
// flush when one is due. stop says Run is to return err.
func (r *consumeLoop) step(ctx context.Context) (stop bool, err error) {
	a := r.a
	wait := time.Until(r.deadline)
	if wait < time.Millisecond {
		wait = time.Millisecond
	}
	// A block at least half full is inserted as soon as the bus has
	// nothing more for it (the end of a burst), instead of waiting out
	// FlushInterval: the insert is large already, and waiting only adds
	// latency (measured: the last block of bench pipeline waited ~0.8 s,
	// a sixth of the run). So is the rest of a backlog, whatever its size,
	// when the flush before filled its block (measured: the last 47k
	// events of bench pipeline waited out the interval, 0.6 s). Other
	// smaller blocks still wait, so a slow trickle is not inserted in
	// small pieces.
	idleFlush := r.buffered >= max(1, a.cfg.MaxBlockEvents/2) || (r.afterFull && r.buffered > 0)
	if idleFlush {
		wait = min(wait, idleWait)
	}
	ds, err := r.cons.Fetch(ctx, r.fetchMax(), wait)
	if errors.Is(err, bus.ErrConsumerLost) {
		// Another aggregator took these partitions: what is buffered
		// here is not ours to insert any more, and a flush under way
		// stops (its intent is replayed by whoever owns it now).
		r.fcancel()
		return true, fmt.Errorf("aggregator: %w", err)
	}
	if err != nil && ctx.Err() == nil {
		a.log.Warn("aggregator: fetch failed", "err", err)
		_ = ctxtime.Sleep(ctx, a.cfg.RetryBackoff)
	}
	if stop, gerr := r.followGeneration(ctx); stop || gerr != nil {
		return stop, gerr
	}
	if r.fenced {
		ds = nil // stale generation: the partitions' owners read them again
	}
	if len(ds) > 0 {
		r.lastSeen = time.Now()
	} else if len(r.blocks) == 0 && r.inflight == nil {
		// Idle with nothing under way: mark what was stored done.
		a.clearDone(ctx)
		if a.cfg.StopWhenIdle > 0 && time.Since(r.lastSeen) > a.cfg.StopWhenIdle {
			a.log.Info("aggregator: idle, stopping", "idle", a.cfg.StopWhenIdle)
			return true, nil
		}
	}
	for _, d := range ds {
		r.take(ctx, d)
	}
	if r.buffered >= r.target || time.Now().After(r.deadline) || (idleFlush && err == nil && len(ds) == 0 && r.buffered > 0) {
		return r.startFlush(ctx)
	}
	return false, nil
}

// fetchMax is how many messages to fetch: no more than fills the block. A
// fetch of 1024 batches of 1000 events was ten 100k-event blocks buffered
// at once (measured: the pipeline's Go heap held ~300 MB of events and
// ~200 MB of messages).
func (r *consumeLoop) fetchMax() int {
	fetchMax := 1024
	if perMsg := float64(r.decodedEvents) / float64(max(r.decodedMsgs, 1)); r.decodedMsgs > 0 && perMsg >= 1 {
		fetchMax = min(1024, max(1, int(float64(r.target-r.buffered)/perMsg)+1))
	}
	return fetchMax
}

// followGeneration enters a new consumer group generation when one has
// begun. stop says Run is to return err.
func (r *consumeLoop) followGeneration(ctx context.Context) (stop bool, err error) {
	if r.gc == nil {
		return false, nil
	}
	a := r.a
	g := uint64(max(r.gc.Generation(), 0))
	if g == 0 || g == a.epoch {
		return false, nil
	}
	// A new generation: what is buffered may belong to another
	// member now. Let the flush under way finish (or be fenced),
	// drop the rest, fence, and replay the group's intents.
	if err := r.waitFlush(); err != nil && ctx.Err() == nil {
		a.log.Warn("aggregator: flush before a rebalance failed; its intent is replayed", "err", err)
	}
	r.forget(r.blocks)
	r.blocks, r.shared, r.buffered, r.fenced = map[int]*block{}, nil, 0, false
	if err := a.enter(ctx, g, r.gc.Assigned()); err != nil {
		if ctx.Err() != nil {
			return true, nil
		}
		return true, err
	}
	r.deadline = time.Now().Add(a.cfg.FlushInterval)
	return false, nil
}

// take decodes delivery d into the block of its partition, or acks it
// when it is stored already.
func (r *consumeLoop) take(ctx context.Context, d bus.Delivery) {
	a := r.a
	if a.fencer != nil && !a.floorChecked[d.Partition] {
		a.floorChecked[d.Partition] = true
		if err := a.checkFloor(ctx, d.Partition, d.Position); err != nil {
			// Only when ctx ends: take nothing more in this generation
			// (nothing past this delivery may be acked).
			a.log.Warn("aggregator: positions below the partition's floor not checked; dropping deliveries until the next generation", "partition", d.Partition, "err", err)
			r.fenced = true
			return
		}
	}
	// Presence matters: Kafka offsets start at 0.
	if f, seen := a.floor[d.Partition]; (seen && d.Position <= f) || a.inStoredRange(d.Partition, d.Position) {
		a.count(func(s *Stats) { s.Skipped++ })
		// Already in a block or stored. With a block of this partition
		// buffered, that block's ack covers it (AckAll; a delivery past
		// the block, in a stored range, moves its ack up); with a flush
		// under way, it is acked once that flush has stored its blocks;
		// with neither, everything up to it is stored: ack it now.
		// (Unacked, a stored range's deliveries came again only after
		// AckWait.)
		switch b := r.blocks[d.Partition]; {
		case b != nil:
			if d.Position > b.lastD.Position {
				b.lastD = d
			}
		case r.inflight != nil:
			r.lateAcks = append(r.lateAcks, d)
		default:
			_ = r.cons.Ack(ctx, d)
		}
		return
	}
	b := r.blocks[d.Partition]
	if b == nil {
		b = &block{partition: d.Partition, first: d.Position}
		if a.epoch == 0 {
			// Unfenced: one insert per flush, one buf for its blocks.
			if r.shared == nil {
				r.shared = &evBuf{events: a.bufs.get(a.sharedRoom())}
			}
			b.buf = r.shared
		} else {
			b.buf = &evBuf{events: a.bufs.get(max(1024, a.blockHint+a.blockHint/8))}
		}
		r.blocks[d.Partition] = b
	}
	b.last, b.lastD = d.Position, d
	a.floor[d.Partition] = d.Position
	from := len(b.buf.events)
	n := a.decode(ctx, d, &r.eb, b, true)
	a.markChecked(b, d, from)
	r.buffered += n
	r.decodedEvents += uint64(n)
	r.decodedMsgs++
}

// sharedRoom is the room a shared (unfenced) buf is given: the last
// flush's size and an eighth; once flushes are busy (half a block or more),
// the largest block's, so that every such buf fits every block and is
// reused rather than reallocated or grown as the target moves between
// MaxBlockEvents and MaxBurstBlockEvents (profiled: those allocations and
// growths were ~15% of the pipeline's allocation, which drives the
// collector). At most two are live: the block being filled and the flush's.
func (a *Aggregator) sharedRoom() int {
	if h := a.blockHint; h >= a.cfg.MaxBlockEvents/2 && h <= a.busyRoom()-a.cfg.blockCap()/16 {
		return a.busyRoom()
	}
	return max(1024, a.blockHint+a.blockHint/8)
}

// busyRoom is the one size of the bufs of busy blocks: the largest block's
// and an eighth (a block passes its target by at most a message).
func (a *Aggregator) busyRoom() int { c := a.cfg.blockCap(); return c + c/8 }

// startFlush waits for the flush under way and starts one of the blocks
// filled since. stop says Run is to return err.
func (r *consumeLoop) startFlush(ctx context.Context) (stop bool, err error) {
	a := r.a
	full := r.buffered >= r.target
	r.afterFull = full
	r.resize()
	if r.inflight != nil {
		// Encode this insert while the one under way runs.
		a.prepareAhead(r.blocks, r.shared)
	}
	// One flush runs while the next blocks fill: inserting and
	// consuming overlap, and flushes stay in order.
	if err := r.waitFlush(); err != nil {
		if ctx.Err() != nil {
			a.log.Warn("aggregator: flush cut short by shutdown; the bus will redeliver and the intent replays", "err", err)
			return true, nil
		}
		return true, err
	}
	if len(r.blocks) > 0 {
		a.blockHint = 0
		for _, b := range r.blocks {
			a.blockHint = max(a.blockHint, len(b.buf.events))
		}
		if full {
			// The next block fills to the new target: room for it at
			// once, rather than doubling (and copying) as it grows.
			a.blockHint = max(a.blockHint, r.target)
		}
		ch := make(chan error, 1)
		go func(bs map[int]*block, epoch uint64) { ch <- a.flush(r.fctx, r.cons, bs, epoch) }(r.blocks, a.epoch)
		r.inflight, r.inflightBlocks = ch, r.blocks
		r.blocks, r.shared = map[int]*block{}, nil
	}
	r.buffered = 0
	r.deadline = time.Now().Add(a.cfg.FlushInterval)
	return false, nil
}

// resize adapts the block target before a flush: a block that filled
// while the insert before it still runs (the store is behind, the bus
// holds a backlog) makes the next ones half as large again, up to
// MaxBurstBlockEvents; a block that filled with the store idle, or one
// flushed by time, brings the target back towards MaxBlockEvents. Memory
// stays bounded by MaxBurstBlockEvents (and the buffer free list's limit).
func (r *consumeLoop) resize() {
	base, burst := r.a.cfg.MaxBlockEvents, r.a.cfg.blockCap()
	switch {
	case r.buffered >= r.target && r.inflight != nil && !r.inflightDone():
		r.target = min(burst, r.target+r.target/2)
	case r.buffered >= r.target:
		r.target = max(base, r.target-base/4)
	default:
		r.target = max(base, r.target/2)
	}
}

// inflightDone reports, without waiting, whether the flush under way has
// finished; its result stays for waitFlush.
func (r *consumeLoop) inflightDone() bool {
	select {
	case err := <-r.inflight:
		r.inflight = make(chan error, 1)
		r.inflight <- err
		return true
	default:
		return false
	}
}

// aheadPreparer is a store that can encode an insert before it is made
// (store.DB.PrepareInsert).
type aheadPreparer interface {
	PrepareInsert(token string, events []event.Event)
}

// prepareAhead has the store encode the unfenced insert of blocks (all in
// shared) now, while the flush before it still runs: chDB runs one
// statement at a time, and this way encoding the next block in Go overlaps
// it. The flush then makes exactly this insert (same token, same events);
// the intents are still recorded before it.
func (a *Aggregator) prepareAhead(blocks map[int]*block, shared *evBuf) {
	p, ok := a.store.(aheadPreparer)
	if !ok || a.epoch != 0 || shared == nil || len(blocks) == 0 || len(shared.check.spans) > 0 {
		return // (events to look up first: the insert may change)
	}
	bs := make([]*block, 0, len(blocks))
	for _, b := range blocks {
		if b.buf != shared {
			return
		}
		bs = append(bs, b)
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].partition < bs[j].partition })
	p.PrepareInsert(a.groupToken(bs), shared.events)
}

// decode appends d's valid events to b and dead-letters the rest; the
// same function serves live consumption and replay, so a replayed range
// forms exactly the block it formed the first time. live=false suppresses
// dead-lettering (it was done the first time).
func (a *Aggregator) decode(ctx context.Context, d bus.Delivery, eb *event.Batch, b *block, live bool) int {
	origin := fmt.Sprintf("events/%d/%d", d.Partition, d.Position)
	if d.Invalid != "" {
		if live {
			a.deadLetter(ctx, origin, d.Invalid, d.Data)
		}
		return 0
	}
	a.reserve(b)
	// Decode straight into the block's spare capacity (DecodeBatch appends
	// to eb.Events[:0]), saving a copy of every event.
	eb.Events = b.buf.events[len(b.buf.events):len(b.buf.events):cap(b.buf.events)]
	if err := event.DecodeBatch(d.Data, eb); err != nil {
		clear(eb.Events)
		eb.Events = nil
		if live {
			a.deadLetter(ctx, origin, err.Error(), d.Data)
		}
		return 0
	}
	if a.duplicateBatch(d, eb, b, live) {
		return 0
	}
	b.hold = append(b.hold, d.Data)
	return a.keepValid(ctx, d, origin, eb, b, live)
}

// reserve grows b's buffer so that its spare capacity holds a batch of
// twice the last one's size (at least 1024 events).
func (a *Aggregator) reserve(b *block) {
	if want := max(1024, 2*a.lastBatch); cap(b.buf.events)-len(b.buf.events) < want {
		// A busy block gets the room of the largest at once (as
		// sharedRoom), not another doubling and copy.
		need := len(b.buf.events) + want
		n := max(2*cap(b.buf.events), need)
		if n >= a.cfg.MaxBlockEvents/2 && need <= a.busyRoom() {
			n = a.busyRoom()
		}
		grown := a.bufs.get(n)
		grown = append(grown, b.buf.events...)
		a.bufs.put(b.buf.events)
		b.buf.events = grown
	}
}

// duplicateBatch reports whether d's batch was taken already and, if so,
// drops the events decoded into eb. A batch published twice (a producer's
// retry, a spool replay past the bus's duplicate window) is stored once: by
// batch id within the block (deterministic, so a replay forms the same
// block) and, live, against the batches of recent blocks.
func (a *Aggregator) duplicateBatch(d bus.Delivery, eb *event.Batch, b *block, live bool) bool {
	if d.BatchID == "" {
		return false
	}
	if b.ids == nil {
		b.ids = map[string]struct{}{}
	}
	if _, dup := b.ids[d.BatchID]; dup || (live && a.recent.has(d.BatchID)) {
		clear(eb.Events)
		eb.Events = nil
		a.count(func(s *Stats) { s.Duplicates++ })
		a.m.duplicates.Inc()
		return true
	}
	b.ids[d.BatchID] = struct{}{}
	if live {
		a.recent.add(d.BatchID)
	}
	return false
}

// keepValid keeps the valid events of eb in b (dead-lettering the others
// when live) and returns how many it kept. The events were decoded into
// b.buf.events' spare capacity (see decode): the valid ones stay in place.
// When the batch did not fit, DecodeBatch grew its own slice; then they are
// appended (one copy).
func (a *Aggregator) keepValid(ctx context.Context, d bus.Delivery, origin string, eb *event.Batch, b *block, live bool) int {
	inPlace := len(eb.Events) == 0 || (len(b.buf.events) < cap(b.buf.events) && &eb.Events[0] == &b.buf.events[:len(b.buf.events)+1][len(b.buf.events)])
	base := len(b.buf.events)
	if !inPlace {
		clear(b.buf.events[base:cap(b.buf.events)]) // what DecodeBatch wrote there before it grew
	}
	n := 0
	for i := range eb.Events {
		e := &eb.Events[i]
		if err := e.Validate(); err != nil {
			if live {
				j, _ := e.MarshalJSON()
				a.deadLetter(ctx, fmt.Sprintf("%s/event/%d", origin, i), "batch "+d.BatchID+": "+err.Error(), j)
			}
			continue
		}
		if inPlace {
			if i != n {
				eb.Events[n] = *e
			}
		} else {
			b.buf.events = append(b.buf.events, *e)
		}
		n++
	}
	a.lastBatch = len(eb.Events)
	if inPlace {
		b.buf.events = b.buf.events[:base+n]
		clear(eb.Events[n:]) // invalid events past the kept ones
	}
	eb.Events = nil // b.buf.events owns that memory now
	return n
}

func (a *Aggregator) deadLetter(ctx context.Context, origin, reason string, data []byte) {
	a.count(func(s *Stats) { s.DeadLettered++ })
	a.m.deadLettered.Inc()
	for attempt := 0; ; attempt++ {
		err := a.bus.DeadLetter(ctx, bus.DeadLetter{Origin: origin, Reason: reason, Data: data, Time: time.Now()})
		if err == nil {
			return
		}
		if ctx.Err() != nil || attempt >= 5 {
			a.log.Error("aggregator: dead letter could not be stored", "origin", origin, "reason", reason, "err", err)
			return
		}
		_ = ctxtime.Sleep(ctx, a.cfg.RetryBackoff)
	}
}

// flush inserts the blocks of every partition as one insert, exactly once,
// then acks each partition. One insert per flush, not one per partition:
// ClickHouse wants few, large inserts.
func (a *Aggregator) flush(ctx context.Context, cons bus.Consumer, blocks map[int]*block, epoch uint64) error {
	if len(blocks) == 0 {
		return nil
	}
	bs := make([]*block, 0, len(blocks))
	for _, b := range blocks {
		bs = append(bs, b)
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].partition < bs[j].partition })
	if bufs := bufsOf(bs); checkNeeded(bufs) {
		if _, err := a.dropStored(ctx, bufs, false); err != nil {
			return err
		}
	}
	if epoch > 0 {
		// Fenced: one insert per partition, so that a partition's intents
		// are its owner's alone to replay. Their intents are still
		// recorded (and cleared) together, and the fence read once after
		// recording them: that order is all the fencing needs.
		ins := make([]insert, len(bs))
		for i, b := range bs {
			ins[i] = insert{bs: []*block{b}, tok: a.fencedToken(b, epoch), epoch: epoch, ack: func(ctx context.Context) error {
				return cons.Ack(ctx, b.lastD)
			}}
		}
		return a.commit(ctx, ins, epoch)
	}
	return a.commit(ctx, []insert{{bs: bs, tok: a.groupToken(bs), ack: func(ctx context.Context) error {
		for _, b := range bs {
			if err := cons.Ack(ctx, b.lastD); err != nil {
				return err
			}
		}
		return nil
	}}}, epoch)
}

// insert is one deduplicated insert of partition blocks under tok, and the
// ack of their deliveries (nil on a replay).
type insert struct {
	bs    []*block
	tok   string
	epoch uint64 // of a fenced live insert: retries re-read the fence
	ack   func(context.Context) error
}

// groupToken is the deduplication token of a set of partition ranges: a
// hash of the group name and the sorted ranges, so a replay of the same
// ranges gets the same token.
func (a *Aggregator) groupToken(bs []*block) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s", a.cfg.Group)
	for _, b := range bs {
		fmt.Fprintf(h, "|p%d:%d-%d", b.partition, b.first, b.last)
	}
	return a.cfg.Group + "/" + hex.EncodeToString(h.Sum(nil)[:16])
}

// fencedToken is the token of one partition's block inserted in
// generation epoch.
func (a *Aggregator) fencedToken(b *block, epoch uint64) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s|p%d:%d-%d", a.cfg.Group, b.partition, b.first, b.last)
	return a.cfg.Group + "/e" + strconv.FormatUint(epoch, 10) + "/" + hex.EncodeToString(h.Sum(nil)[:16])
}

// tokenEpoch is the generation a token was made in (0: unfenced).
func tokenEpoch(tok string) uint64 {
	parts := strings.Split(tok, "/")
	if len(parts) != 3 || !strings.HasPrefix(parts[1], "e") {
		return 0
	}
	e, _ := strconv.ParseUint(parts[1][1:], 10, 64)
	return e
}

// commit runs intents → inserts → acks → clear for sets of partition
// blocks, retrying the store with backoff until ctx ends (the bus keeps the
// data meanwhile). The intents of one insert share its token; a replay
// gathers them by token and forms the same block again. The intents of all
// the inserts are recorded in one statement before any insert, and cleared
// in one after the last ack (per-partition statements cost about as much as
// the inserts on chDB, which runs one statement at a time). With an epoch
// (a live flush of a fenced group), the inserts happen only if no newer
// generation's fence exists once the intents are recorded; otherwise the
// intents are aborted and errFenced returned.
func (a *Aggregator) commit(ctx context.Context, ins []insert, epoch uint64) error {
	var intents []store.Intent
	now := time.Now()
	for _, x := range ins {
		for _, b := range x.bs {
			intents = append(intents, store.Intent{Consumer: a.cfg.Group, Partition: partitionName(b.partition), First: b.first, Last: b.last,
				Token: x.tok, State: store.IntentPending, Updated: now})
		}
	}
	rec := intents
	if len(a.doneLater) > 0 {
		rec = append(slices.Clip(a.doneLater), intents...)
	}
	if err := a.retry(ctx, "record intent", func() error { return a.store.RecordIntents(ctx, rec) }); err != nil {
		return err
	}
	a.doneLater = nil
	if epoch > 0 && a.fencer != nil {
		fence, err := a.readFence(ctx)
		if err != nil {
			return err
		}
		if fence > epoch {
			for _, in := range intents {
				if err := a.abortIntent(ctx, in); err != nil {
					return err
				}
			}
			return errFenced
		}
	}
	n := 0
	for _, x := range ins {
		m, err := a.insert(ctx, x)
		if err != nil {
			return err
		}
		n += m
	}
	live := epoch == 0
	for _, x := range ins {
		live = live && x.ack != nil
	}
	if live {
		// Marked done with the next flush's intents (or when idle).
		for i := range intents {
			intents[i].State = store.IntentDone
		}
		a.doneLater = intents
	} else if err := a.retry(ctx, "clear intent", func() error { return a.store.ClearIntents(ctx, intents) }); err != nil {
		return err
	}
	a.count(func(s *Stats) { s.Events += uint64(n); s.Blocks += uint64(len(ins)) })
	return nil
}

// clearDone marks the intents of acked inserts done (see doneLater). Call
// it with no flush under way.
func (a *Aggregator) clearDone(ctx context.Context) {
	if len(a.doneLater) == 0 {
		return
	}
	if err := a.retry(ctx, "clear intent", func() error { return a.store.ClearIntents(ctx, a.doneLater) }); err != nil {
		a.log.Warn("aggregator: intents of stored blocks not marked done; they replay (deduplicated) at the next start", "err", err)
		return
	}
	a.doneLater = nil
}

// insert stores x's blocks under its token and acks them; it returns the
// events inserted.
func (a *Aggregator) insert(ctx context.Context, x insert) (int, error) {
	bufs := bufsOf(x.bs)
	n := 0
	for _, b := range bufs {
		n += len(b.events)
	}
	if n > 0 {
		events := bufs[0].events
		if len(bufs) > 1 { // a replay, or fenced blocks
			events = a.bufs.get(n)
			for _, b := range bufs {
				events = append(events, b.events...)
			}
			defer a.bufs.put(events)
		}
		start := time.Now()
		if err := a.insertFenced(ctx, x.epoch, func() error { return a.store.InsertEvents(ctx, x.tok, events) }); err != nil {
			return 0, err
		}
		a.m.insertSeconds.Observe(time.Since(start).Seconds())
		a.m.rows.Add(float64(n))
		if a.observer != nil && x.ack != nil {
			// Not on a replay: the block may have been counted before the crash.
			a.observer.Stored(ctx, events)
		}
	}
	if x.ack != nil {
		if err := a.retry(ctx, "ack", func() error { return x.ack(ctx) }); err != nil {
			return 0, err
		}
	}
	return n, nil
}

func (a *Aggregator) retry(ctx context.Context, what string, fn func() error) error {
	backoff := a.cfg.RetryBackoff
	failing := false
	for {
		err := fn()
		if permanent(err) {
			return err
		}
		if err == nil {
			if failing {
				a.log.Info("aggregator: "+what+" works again", "step", what)
			}
			return nil
		}
		if !failing {
			// Logged once per state change, not per attempt.
			a.log.Warn("aggregator: "+what+" failed, retrying with backoff; the bus keeps the data", "err", err)
			failing = true
		}
		a.m.retries.WithLabelValues(what).Inc()
		if ctx.Err() != nil {
			return fmt.Errorf("aggregator: %s: %w (last error: %v)", what, ctx.Err(), err)
		}
		_ = ctxtime.Sleep(ctx, backoff)
		backoff = min(backoff*2, 10*time.Second)
	}
}

// enter starts consuming in generation g: it fences g, so that members of
// older generations no longer insert, then replays the group's pending
// intents, which sets the floors from scratch.
func (a *Aggregator) enter(ctx context.Context, g uint64, owned []int) error {
	a.log.Info("aggregator: consumer group generation", "generation", g, "partitions", owned)
	a.owned = owned
	if err := a.retry(ctx, "fence", func() error { return a.fencer.Fence(ctx, a.cfg.Group, g) }); err != nil {
		return err
	}
	fence, err := a.readFence(ctx)
	if err != nil {
		return err
	}
	if fence > g {
		// Either a newer generation has begun already (this one ends
		// soon), or the Kafka group was deleted or expired and its
		// generations started again at 1: then every insert stays fenced.
		// Under NATS leases and Kafka rebalances the first is routine;
		// only a warning that persists points at the second.
		a.log.Warn("aggregator: the store holds a fence newer than this generation: a newer generation has begun and this one ends soon; if this repeats for every generation, the Kafka group was recreated (its generations restarted): delete the old fence with ALTER TABLE ingest_intents DELETE WHERE consumer = '<group>/fence'",
			"generation", g, "fence", fence)
	}
	a.epoch = g
	a.floor = map[int]uint64{}
	a.floorChecked, a.skip = map[int]bool{}, map[int][][2]uint64{}
	a.resetFirstBlocks()
	if r, ok := a.observer.(interface{ Reset() }); ok {
		r.Reset() // counts of keys whose partitions moved are stale
	}
	a.count(func(s *Stats) { s.Rebalances++ })
	return a.replay(ctx)
}

// readFence reads the group's fence, the newest generation that fenced
// it (retrying).
func (a *Aggregator) readFence(ctx context.Context) (uint64, error) {
	var fence uint64
	err := a.retry(ctx, "read fence", func() error {
		var err error
		fence, err = a.fencer.MaxFence(ctx, a.cfg.Group)
		return err
	})
	return fence, err
}

// abortIntent marks intent in aborted (retrying): its range is not to be
// replayed.
func (a *Aggregator) abortIntent(ctx context.Context, in store.Intent) error {
	return a.retry(ctx, "abort intent", func() error {
		return a.fencer.AbortIntent(ctx, a.cfg.Group, in.Partition, in.Token)
	})
}

// replay re-inserts the ranges of pending intents with their tokens.
func (a *Aggregator) replay(ctx context.Context) error {
	var intents []store.Intent
	if err := a.retry(ctx, "read intents", func() error {
		var err error
		intents, err = a.store.Intents(ctx, a.cfg.Group)
		return err
	}); err != nil {
		return err
	}
	order, groups := pendingByToken(intents)
	for _, tok := range order {
		if err := a.replayInsert(ctx, tok, groups[tok]); err != nil {
			return err
		}
	}
	return a.raiseFloorToCommitted(ctx)
}

// pendingByToken groups the pending intents by token, in the order of
// their first appearance: intents that share a token were one insert.
func pendingByToken(intents []store.Intent) (order []string, groups map[string][]store.Intent) {
	groups = map[string][]store.Intent{}
	for _, in := range intents {
		if in.State != store.IntentPending {
			continue
		}
		if _, ok := groups[in.Token]; !ok {
			order = append(order, in.Token)
		}
		groups[in.Token] = append(groups[in.Token], in)
	}
	return order, groups
}

// replayInsert replays the intents of one insert (token tok) as one
// insert, unless one of its partitions is not this aggregator's.
func (a *Aggregator) replayInsert(ctx context.Context, tok string, intents []store.Intent) error {
	var bs []*block
	for _, in := range intents {
		p, err := strconv.Atoi(strings.TrimPrefix(in.Partition, "events/"))
		if err != nil {
			return fmt.Errorf("aggregator: intent with partition %q: %w", in.Partition, err)
		}
		if !a.replays(p) {
			return nil
		}
		b, err := a.replayRange(ctx, in, p)
		if err != nil {
			return err
		}
		if b != nil {
			bs = append(bs, b)
		}
	}
	if len(bs) == 0 {
		return nil
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].partition < bs[j].partition })
	// Events stored already are dropped; see resent.go for why the result
	// is stored once whether or not this token's insert happened.
	if _, err := a.dropStored(ctx, bufsOf(bs), true); err != nil {
		return err
	}
	if tokenEpoch(tok) == 0 && a.groupToken(bs) != tok { // (a fenced token is never a group token)
		// Some of the insert's intents were cleared before a crash:
		// the insert itself happened, so this replay is dropped by the
		// store whatever it holds; keep the recorded token.
		a.log.Info("aggregator: replaying part of an insert", "token", tok, "ranges", len(bs))
	}
	a.log.Info("aggregator: replaying intent", "token", tok, "ranges", len(bs))
	if err := a.commit(ctx, []insert{{bs: bs, tok: tok}}, 0); err != nil {
		return err
	}
	for _, b := range bs {
		if f, seen := a.floor[b.partition]; !seen || b.last > f {
			a.floor[b.partition] = b.last
		}
	}
	a.count(func(s *Stats) { s.Replayed++ })
	return nil
}

// replays reports whether the intents of partition p are this
// aggregator's to replay: p is among its configured partitions and, fenced,
// among those its generation owns.
func (a *Aggregator) replays(p int) bool {
	if len(a.cfg.Partitions) > 0 && !slices.Contains(a.cfg.Partitions, p) {
		return false
	}
	return a.fencer == nil || slices.Contains(a.owned, p)
}

// replayRange reads the range of intent in back from the bus into a block.
// It returns a nil block when there is nothing to replay: the intent was
// superseded by a later generation's (and is aborted), or the bus no
// longer holds the range.
func (a *Aggregator) replayRange(ctx context.Context, in store.Intent, p int) (*block, error) {
	if a.fencer != nil {
		dead, err := a.superseded(ctx, in)
		if err != nil {
			return nil, err
		}
		if dead {
			a.log.Info("aggregator: pending intent superseded by a later generation's; aborted", "partition", in.Partition, "first", in.First, "last", in.Last)
			return nil, a.abortIntent(ctx, in)
		}
	}
	b := &block{partition: p, first: in.First, last: in.Last, buf: &evBuf{}}
	var eb event.Batch
	err := a.bus.ReadRange(ctx, p, in.First, in.Last, func(d bus.Delivery) error {
		a.decode(ctx, d, &eb, b, false)
		return nil
	})
	if errors.Is(err, bus.ErrRangeGone) {
		// The bus no longer holds the range (retention, or a log
		// recreated): nothing can replay it. Say so loudly, keep a
		// dead letter as the record, and go on rather than never start.
		a.log.Error("aggregator: pending range is gone from the bus; whatever of it was not stored is lost",
			"partition", in.Partition, "first", in.First, "last", in.Last, "err", err)
		a.m.rangesGone.Inc()
		a.deadLetter(ctx, fmt.Sprintf("%s/%d-%d", in.Partition, in.First, in.Last), "pending insert range gone from the bus: "+err.Error(), nil)
		_ = a.store.ClearIntent(ctx, a.cfg.Group, in.Partition, in.Token)
		return nil, nil // the rest of the insert's ranges replay under its token
	}
	if err != nil {
		return nil, fmt.Errorf("aggregator: replay %s [%d,%d]: %w", in.Partition, in.First, in.Last, err)
	}
	return b, nil
}

// raiseFloorToCommitted skips everything up to the highest recorded range,
// which is stored, even if the bus delivers it again (an ack lost in a
// crash).
func (a *Aggregator) raiseFloorToCommitted(ctx context.Context) error {
	var committed map[string]uint64
	if err := a.retry(ctx, "read committed positions", func() error {
		var err error
		committed, err = a.store.Committed(ctx, a.cfg.Group)
		return err
	}); err != nil {
		return err
	}
	for name, last := range committed {
		p, err := strconv.Atoi(strings.TrimPrefix(name, "events/"))
		if f, seen := a.floor[p]; err == nil && (!seen || last > f) {
			a.floor[p] = last
		}
	}
	return nil
}

// checkFloor runs at the first delivery pos of partition p in a generation
// (fenced), the lowest the bus will deliver (its consumer starts after the
// partition's ack floor). The floor that replay and raiseFloorToCommitted
// set is the end of the highest range stored, but a range below it need not
// be stored: an old owner's flush fenced (its intent aborted, nothing
// inserted, nothing acked) below its next flush, whose intent was still
// pending when the new owner read it (the old owner aborts it a moment
// later, or died first) and was replayed. Skipping all of [pos, floor] then
// acked the fenced flush's batches unstored (the lease test's lost batch).
// So below the floor only the ranges of done intents are skipped: the
// floor goes to just before pos and the done ranges of [pos, floor] become
// skip[p]; the rest is taken again (the first block is looked up in the
// store, resent.go).
func (a *Aggregator) checkFloor(ctx context.Context, p int, pos uint64) error {
	f, seen := a.floor[p]
	if !seen || pos > f {
		return nil
	}
	var ins []store.Intent
	if err := a.retry(ctx, "read intents", func() error {
		var err error
		ins, err = a.fencer.Overlapping(ctx, a.cfg.Group, partitionName(p), pos, f)
		return err
	}); err != nil {
		return err
	}
	var done [][2]uint64
	for _, in := range ins {
		if in.State == store.IntentDone {
			done = append(done, [2]uint64{max(in.First, pos), min(in.Last, f)})
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i][0] < done[j][0] })
	if pos == 0 {
		delete(a.floor, p)
	} else {
		a.floor[p] = pos - 1
	}
	a.skip[p] = done
	if len(done) == 0 || done[0][0] > pos {
		a.log.Info("aggregator: positions below the partition's floor are not all stored; reading them again", "partition", p, "from", pos, "floor", f, "stored_ranges", len(done))
	}
	return nil
}

// inStoredRange reports whether position pos of partition p lies in a range of
// skip[p] (then pos is the new floor); ranges below pos are forgotten
// (deliveries come in position order).
func (a *Aggregator) inStoredRange(p int, pos uint64) bool {
	rs := a.skip[p]
	for len(rs) > 0 && rs[0][1] < pos {
		rs = rs[1:]
	}
	if len(rs) == 0 {
		delete(a.skip, p)
		return false
	}
	a.skip[p] = rs
	if rs[0][0] <= pos {
		a.floor[p] = pos
		return true
	}
	return false
}

// superseded reports whether an intent of a later generation overlaps in:
// that owner did not see in (or it would have replayed it and consumed past
// it), so in's owner saw the fence and never inserted it.
func (a *Aggregator) superseded(ctx context.Context, in store.Intent) (bool, error) {
	var others []store.Intent
	if err := a.retry(ctx, "read intents", func() error {
		var err error
		others, err = a.fencer.Overlapping(ctx, a.cfg.Group, in.Partition, in.First, in.Last)
		return err
	}); err != nil {
		return false, err
	}
	e := tokenEpoch(in.Token)
	for _, o := range others {
		if o.Token != in.Token && tokenEpoch(o.Token) > e {
			return true, nil
		}
	}
	return false, nil
}

func (a *Aggregator) count(fn func(*Stats)) {
	a.mu.Lock()
	fn(&a.stats)
	a.mu.Unlock()
}

type metrics struct {
	rangesGone    prometheus.Counter
	duplicates    prometheus.Counter
	lag           *prometheus.GaugeVec
	rows          prometheus.Counter
	insertSeconds prometheus.Histogram
	deadLettered  prometheus.Counter
	retries       *prometheus.CounterVec

	storedDuplicates prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		rangesGone: prometheus.NewCounter(prometheus.CounterOpts{Name: "keymeter_aggregator_ranges_gone_total", Help: "Pending insert ranges the bus no longer held at replay (possible loss; see the dead-letter log)."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "keymeter_aggregator_duplicate_batches_total", Help: "Batches skipped because their id was already stored."}),
		lag:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keymeter_aggregator_lag_batches", Help: "Event batches published but not yet stored and acknowledged, per partition."}, []string{"partition"}),
		rows:       prometheus.NewCounter(prometheus.CounterOpts{Name: "keymeter_aggregator_rows_total", Help: "Events inserted into the store."}),
		insertSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "keymeter_aggregator_insert_seconds", Help: "Latency of one block insert.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{Name: "keymeter_aggregator_dead_lettered_total", Help: "Messages or events sent to the dead-letter log."}),
		retries:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymeter_aggregator_retries_total", Help: "Retried store or bus operations."}, []string{"step"}),

		storedDuplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "keymeter_aggregator_stored_duplicate_events_total", Help: "Events of resent batches, replays and first blocks dropped because the store held them already."}),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.rangesGone, m.duplicates, m.storedDuplicates, m.lag, m.rows, m.insertSeconds, m.deadLettered, m.retries} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("aggregator metrics: %w", err)
		}
	}
	return nil
}

// watchLag keeps the lag gauge current until ctx ends.
func (a *Aggregator) watchLag(ctx context.Context, lg bus.Lagger) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		if lag, err := lg.Lag(ctx, a.cfg.Group); err == nil {
			for p, n := range lag {
				a.m.lag.WithLabelValues(strconv.Itoa(p)).Set(float64(n))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// recent is a bounded set of batch ids, oldest forgotten first.
type recent struct {
	set  map[string]struct{}
	ring []string
	next int
}

func newRecent(n int) *recent {
	return &recent{set: make(map[string]struct{}, n), ring: make([]string, n)}
}

func (r *recent) has(id string) bool { _, ok := r.set[id]; return ok }

// remove forgets id (its slot in the ring is reused in turn).
func (r *recent) remove(id string) { delete(r.set, id) }

func (r *recent) add(id string) {
	if old := r.ring[r.next]; old != "" {
		delete(r.set, old)
	}
	id = strings.Clone(id) // ids point into delivery bytes otherwise
	r.ring[r.next] = id
	r.set[id] = struct{}{}
	r.next = (r.next + 1) % len(r.ring)
}
