package verifier

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

// EmitterConfig configures an Emitter.
type EmitterConfig struct {
	Publisher bus.Publisher
	// Partitions is the bus's number of event partitions: events are
	// batched per partition so that a batch lands where its keys belong.
	Partitions int
	// Producer is the verifier id, the prefix of every event and batch id.
	Producer string
	// DataDir holds the spool (DataDir/spool).
	DataDir string
	// MaxSpoolBytes bounds the spool (default 1 GiB).
	MaxSpoolBytes int64
	// QueueSize bounds the events waiting to be batched (default 65536).
	QueueSize int
	// MaxBatch is the most events in one batch (default 1000).
	MaxBatch int
	// MaxBatchBytes bounds a batch's encoded size. Default: the
	// publisher's message size limit (bus.MaxMessageBytes: the NATS
	// connection's max payload, the Kafka producer's MaxMessageBytes) less
	// a margin for the message headers, read again for every group of
	// events taken from the queue.
	MaxBatchBytes int
	// FlushInterval is the longest an event waits for its batch (default 50ms).
	FlushInterval time.Duration
	// MaxInflight bounds unacknowledged batches; beyond it batches are
	// spooled rather than waited for (default 256).
	MaxInflight int
	// PublishTimeout bounds one Publish call (default 1s).
	PublishTimeout time.Duration
	// DurableLog makes Emit wait until the event is written and fsynced
	// in a local log (DataDir/log, group commit) and fsyncs the spool, so
	// that a crash (SIGKILL, power loss) loses no event whose Emit
	// returned: the next start replays it. See wal.go.
	DurableLog bool
	// LogSegmentBytes is the size at which the durable log starts a new
	// segment (default 64 MiB); acknowledged segments are deleted.
	LogSegmentBytes int64
	Logger          *slog.Logger
}

// Validate reports every problem of the configuration; it changes nothing
// (NewEmitter fills in the defaults).
func (c EmitterConfig) Validate() error {
	var errs []error
	if c.Publisher == nil {
		errs = append(errs, errors.New("verifier: emitter: Publisher is required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("verifier: emitter: DataDir is required (the spool lives there)"))
	}
	if c.Producer == "" {
		errs = append(errs, errors.New("verifier: emitter: Producer (verifier id) is required"))
	}
	return errors.Join(errs...)
}

// withDefaults is c with the defaults filled in where a field is zero.
func (c EmitterConfig) withDefaults() EmitterConfig {
	if c.Partitions <= 0 {
		c.Partitions = 1
	}
	if c.MaxSpoolBytes == 0 {
		c.MaxSpoolBytes = 1 << 30
	}
	if c.QueueSize == 0 {
		c.QueueSize = 1 << 16
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 1000
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = 50 * time.Millisecond
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = 256
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = time.Second
	}
	if c.LogSegmentBytes == 0 {
		c.LogSegmentBytes = 64 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// EmitterStats are cumulative counts since start.
type EmitterStats struct {
	Emitted   uint64 // events accepted by Emit
	Published uint64 // events acknowledged by the bus (directly or replayed)
	Spooled   uint64 // events written to the spool
	Replayed  uint64 // events published from the spool
	Dropped   uint64 // events lost: queue full or spool full
	// Recovered: events replayed from the durable log of a run that died.
	Recovered uint64
	// LogErrors: durable log write, fsync and reopen errors (while the log
	// is failed, events are not crash-safe).
	LogErrors uint64
	// Now: events and bytes in the spool, and whether the bus is taking
	// batches.
	SpoolEvents int
	SpoolBytes  int64
	BusUp       bool
	// BacklogEvents: recovered events waiting in the log for room in the
	// spool (see backlog.go).
	BacklogEvents int
	// Split: batches the bus refused as too large and that were published
	// split in halves instead (see publishSplit).
	Split uint64
	// DeadLettered: events set aside in the dead-letter directory
	// (DataDir/deadletter) because even alone they exceed the bus's
	// message size.
	DeadLettered uint64
}

// Emitter batches usage events and publishes them on the bus. Emit never
// blocks: while the bus is unreachable, batches go to a bounded disk spool
// and are replayed in order once it is back; only when the queue or the
// spool is full are events dropped, and those are counted and logged.
//
// Event ids are <producer>-<boot epoch>-<sequence>, batch ids
// <producer>-<boot epoch>-b<sequence>. The boot epoch (start time in ms and
// 20 random bits, base 36) keeps them unique across restarts, and apart
// even for two processes started with the same verifier id.
type Emitter struct {
	cfg     EmitterConfig
	log     *slog.Logger
	in      chan emitItem
	spool   *spool
	wal     *wal     // nil unless DurableLog
	backlog *backlog // nil unless DurableLog
	lock    *os.File // the data directory's lock
	epoch   string
	wpool   sync.Pool // chan bool, one per waiting Emit
	// tried is the spool batch whose publish was tried and not
	// acknowledged (at start: the oldest, which the previous run may have
	// been publishing; the replayer also marks each file on disk before
	// publishing it, spool.markResent): it is published again marked
	// Resent.
	tried uint64
	// markFailed: a spool file could not be marked (logged once).
	markFailed bool

	closing    atomic.Bool
	stop       chan struct{} // closed by Close: collector drains and exits
	done       chan struct{} // closed when the collector has exited
	wake       chan struct{} // pokes the replayer
	inflight   chan inflight
	ackDone    chan struct{}
	abandon    chan struct{} // closed by Close when ctx ends: spool what is unacknowledged
	replayDone chan struct{}
	replayStop chan struct{}

	offline atomic.Bool

	emitted, published, spooled, replayed, dropped, recovered atomic.Uint64
	split, deadLettered                                       atomic.Uint64
	lastDropLog, lastDeadLog, lastBigLog                      atomic.Int64
	deadBytes                                                 atomic.Int64 // written to DataDir/deadletter by this run
}

// emitItem is an event on its way to the collector; with the durable log,
// w receives whether it was committed.
type emitItem struct {
	ev event.Event
	w  chan bool
}

type inflight struct {
	ack bus.PubAck
	msg bus.Message
	n   int
}

// NewEmitter opens the spool (replaying what a previous run left there)
// and starts the batcher.
func NewEmitter(cfg EmitterConfig) (*Emitter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	sp, err := openSpool(filepath.Join(cfg.DataDir, "spool"), cfg.MaxSpoolBytes)
	if err != nil {
		unlockDataDir(lock)
		return nil, err
	}
	sp.sync = cfg.DurableLog
	e := &Emitter{
		cfg: cfg, log: cfg.Logger, spool: sp, lock: lock, tried: sp.first(),
		in:         make(chan emitItem, cfg.QueueSize),
		epoch:      bootEpoch(),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		inflight:   make(chan inflight, cfg.MaxInflight),
		ackDone:    make(chan struct{}),
		abandon:    make(chan struct{}),
		replayDone: make(chan struct{}),
		replayStop: make(chan struct{}),
	}
	e.wpool.New = func() any { return make(chan bool, 1) }
	if cfg.DurableLog {
		if err := e.recoverLog(); err != nil {
			unlockDataDir(lock)
			return nil, err
		}
	}
	if b, n, _ := sp.stats(); b > 0 {
		e.log.Info("replaying event spool from a previous run", "batches", b, "events", n)
		e.offline.Store(true)
	}
	if _, n := e.backlog.len(); n > 0 {
		e.offline.Store(true)
	}
	go e.collect()
	go e.reapAcks()
	go e.replay()
	return e, nil
}

// recoverLog moves what previous runs' durable log holds into the
// (fsynced) spool, which publishes it, marked Resent: those batches may
// have reached the bus before the crash. What does not fit stays in the
// log directory as a backlog that the replayer moves on as the spool
// drains (backlog.go), so that a full spool never stops a start. Then it
// starts a new log.
func (e *Emitter) recoverLog() error {
	dir := filepath.Join(e.cfg.DataDir, "log")
	rec, err := recoverWAL(dir)
	if err != nil {
		return err
	}
	n, rest := 0, rec.batches
	for len(rest) > 0 {
		b := rest[0]
		if !e.spool.has(b.id) { // else spooled by an earlier start that died
			if err := e.spool.put(e.recoveredMsg(&b), len(b.events)); err != nil {
				if !errors.Is(err, ErrSpoolFull) {
					e.log.Error("durable log recovery: spool write failed; the rest stays in the log", "err", err)
				}
				break
			}
		}
		n += len(b.events)
		rest = rest[1:]
	}
	bl, err := saveBacklog(dir, rec.last, rest)
	if err != nil {
		// Keep the dead run's files: the next start reads them again (and
		// may spool again what was moved meanwhile, marked Resent).
		e.log.Error("durable log recovery: cannot write the backlog; keeping the log files", "err", err)
		bl = &backlog{batches: rest, keep: rec.files}
		for _, b := range rest {
			bl.events += len(b.events)
		}
	} else {
		for _, f := range rec.files {
			if f == bl.path {
				continue
			}
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				// Harmless with a backlog, which replaces it; without,
				// the next start spools again what is not in the spool.
				e.log.Error("durable log recovery: cannot delete a recovered file", "err", err)
			}
		}
	}
	e.backlog = bl
	_, waiting := bl.len()
	e.recovered.Add(uint64(n + waiting))
	if len(rec.files) > 0 {
		e.log.Info("durable event log of a previous run recovered", "batches", len(rec.batches), "spooled_events", n, "backlog_events", waiting)
	}
	// A log that cannot be opened (disk full) is failed from the start:
	// the verifier serves and reopens it as it would a log that failed
	// later (collector.commit).
	w, err := openWAL(dir, e.cfg.LogSegmentBytes, 1)
	if err != nil {
		e.log.Error("durable event log cannot be opened; serving without its guarantee until it can", "err", err)
	}
	e.wal = w
	return nil
}

// recoveredMsg is the message of a batch recovered from the log.
func (e *Emitter) recoveredMsg(b *walBatch) bus.Message {
	eb := event.Batch{ID: b.id, Producer: e.cfg.Producer, Created: time.Now(), Events: b.events}
	return bus.Message{Key: b.events[0].PartitionKey(), BatchID: b.id, Source: e.cfg.Producer, Data: event.AppendBatch(nil, &eb), Resent: true}
}

// Emit hands an event to the batcher. Without the durable log it never
// blocks, and reports false if the event was dropped (queue full or
// emitter closed). With it, Emit waits (queue full included) until the
// event is fsynced in the log, and reports false only if the emitter is
// closed; a log that cannot be written is logged and the event goes on
// without that guarantee.
func (e *Emitter) Emit(ev *event.Event) bool {
	if e.closing.Load() {
		e.drop(1, "emitter closed")
		return false
	}
	if e.wal != nil {
		w := e.wpool.Get().(chan bool)
		select {
		case e.in <- emitItem{ev: *ev, w: w}:
		case <-e.done:
			e.drop(1, "emitter closed")
			return false
		}
		e.emitted.Add(1)
		select {
		case <-w:
		case <-e.done:
			select {
			case <-w:
			default:
				return false // never reached the collector: nothing to wait for
			}
		}
		e.wpool.Put(w)
		return true
	}
	select {
	case e.in <- emitItem{ev: *ev}:
		e.emitted.Add(1)
		return true
	default:
		e.drop(1, "event queue full")
		return false
	}
}

func (e *Emitter) drop(n int, why string) {
	total := e.dropped.Add(uint64(n))
	now := time.Now().UnixNano()
	last := e.lastDropLog.Load()
	if now-last > int64(10*time.Second) && e.lastDropLog.CompareAndSwap(last, now) {
		e.log.Error("usage events dropped", "reason", why, "events", n, "dropped_total", total)
	}
}

// Stats returns the emitter's counters.
func (e *Emitter) Stats() EmitterStats {
	_, ev, by := e.spool.stats()
	_, backlog := e.backlog.len()
	var logErrs uint64
	if e.wal != nil {
		_, logErrs, _ = e.wal.health()
	}
	return EmitterStats{
		Emitted: e.emitted.Load(), Published: e.published.Load(), Spooled: e.spooled.Load(),
		Replayed: e.replayed.Load(), Dropped: e.dropped.Load(), Recovered: e.recovered.Load(),
		LogErrors: logErrs, SpoolEvents: ev, SpoolBytes: by, BusUp: !e.offline.Load(), BacklogEvents: backlog,
		Split: e.split.Load(), DeadLettered: e.deadLettered.Load(),
	}
}

// LogHealth is the durable log's current failure: nil without the log or
// while it can be written.
func (e *Emitter) LogHealth() error {
	if e.wal == nil {
		return nil
	}
	failed, _, _ := e.wal.health()
	return failed
}

// ReadyGate wraps an admin handler: while the durable log cannot be
// written, /readyz answers 503 (this verifier's answers are not
// crash-safe, a balancer should prefer another); everything else goes to h.
func (e *Emitter) ReadyGate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			if err := e.LogHealth(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, "durable event log cannot be written: "+err.Error()+"\n")
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// collect batches events per partition and hands full or aged batches on.
// With the durable log it is also the log's writer: it appends the events
// it takes from the queue in one go, commits them (write + fsync: the group
// commit) and only then releases their Emit calls; a batch's seal is
// committed before the batch is published.
func (e *Emitter) collect() {
	defer close(e.done)
	c := &collector{
		e:         e,
		parts:     make([][]event.Event, e.cfg.Partitions),
		partFirst: make([]uint64, e.cfg.Partitions),
		partBytes: make([]int, e.cfg.Partitions),
		maxBytes:  e.batchLimit(),
		idBuf:     make([]byte, 0, 64),
		prefix:    e.cfg.Producer + "-" + e.epoch + "-",
	}
	tick := time.NewTicker(e.cfg.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case it := <-e.in:
			c.take(&it)
		case <-tick.C:
			if c.e.LogHealth() != nil {
				c.commit() // reopen even without traffic (a done record may have failed it)
			}
			c.sealAll()
			c.publish()
			c.trim()
		case <-e.stop:
			c.drain()
			c.sealAll()
			c.publish()
			return
		}
	}
}

// collector is the state of collect: the batches being filled per
// partition and those sealed but not yet published.
type collector struct {
	e          *Emitter
	parts      [][]event.Event
	partFirst  []uint64 // seq of parts[p][0]
	partBytes  []int    // bound of parts[p]'s encoded batch (eventBound)
	maxBytes   int      // batchLimit, read again in take
	seq        uint64
	batchSeq   uint64
	idBuf      []byte
	prefix     string // of event and batch ids
	encBuf     []byte
	walBuf     []byte
	logFailed  bool      // the durable log is failed (reported once)
	retryAt    time.Time // of the next reopen while it stays failed
	trimFailed bool
	ready      []sealedBatch
	waiters    []chan bool
}

// sealedBatch is a batch sealed and encoded, waiting for its seal's commit.
type sealedBatch struct {
	m bus.Message
	n int
}

// commit commits the durable log, if any, and reports whether that worked.
//
// A write or fsync error fails the log (wal.go): the error is logged once,
// counted (Stats.LogErrors, keymeter_verifier_durable_log_errors_total),
// shown by /readyz and returned by Close. The collector at once reopens the
// log in a new segment and writes into it again every event not yet
// acknowledged (unsealed, sealed, and published while the log was failed),
// so the events of this commit are crash-safe after all; while that fails
// too (disk full) it tries again at most once a second, and events are
// published without the guarantee: Emit still returns true, the request
// was answered. Nothing is counted twice: a batch is published once, under
// its own id; after a crash, the next start publishes what the log holds
// again marked Resent, with the same batch and event ids, which the
// aggregator checks by event id.
func (c *collector) commit() bool {
	e := c.e
	if e.wal == nil {
		return true
	}
	err := e.wal.commit()
	if err == nil {
		return true
	}
	if !c.logFailed {
		e.log.Error("durable event log cannot be written; reopening it in a new segment", "err", err)
		c.logFailed = true
	} else if time.Now().Before(c.retryAt) {
		return false
	}
	if err := e.wal.reopen(c.seq+1, c.prefix, c.parts); err != nil {
		c.retryAt = time.Now().Add(time.Second)
		return false
	}
	c.logFailed = false
	e.log.Info("durable event log reopened in a new segment; events are crash-safe again")
	return true
}

// seal closes partition p's batch; it is published by publish, after
// the seal is committed.
func (c *collector) seal(p int) {
	e := c.e
	evs := c.parts[p]
	if len(evs) == 0 {
		return
	}
	c.batchSeq++
	b := event.Batch{
		ID:       c.prefix + "b" + strconv.FormatUint(c.batchSeq, 10),
		Producer: e.cfg.Producer,
		Created:  time.Now(),
		Events:   evs,
	}
	c.encBuf = event.AppendBatch(c.encBuf[:0], &b)
	data := make([]byte, len(c.encBuf))
	copy(data, c.encBuf)
	if e.wal != nil {
		e.wal.seal(p, len(evs), b.ID, c.partFirst[p], data)
	}
	m := bus.Message{Key: evs[0].PartitionKey(), BatchID: b.ID, Source: e.cfg.Producer, Data: data}
	c.ready = append(c.ready, sealedBatch{m: m, n: len(evs)})
	c.parts[p] = evs[:0]
	c.partBytes[p] = 0
}

func (c *collector) sealAll() {
	for p := range c.parts {
		c.seal(p)
	}
}

// publish commits the sealed batches' seals and sends the batches (even
// if the log cannot be written: see commit).
func (c *collector) publish() {
	if len(c.ready) == 0 {
		return
	}
	_ = c.commit()
	for _, r := range c.ready {
		c.e.send(r.m, r.n)
	}
	clear(c.ready)
	c.ready = c.ready[:0]
}

// add gives it an id, appends it to its partition's batch (and the
// durable log) and seals the batch when full.
func (c *collector) add(it *emitItem) {
	e := c.e
	ev := &it.ev
	c.seq++
	c.idBuf = append(c.idBuf[:0], c.prefix...)
	c.idBuf = strconv.AppendUint(c.idBuf, c.seq, 10)
	ev.ID = string(c.idBuf)
	if ev.VerifierID == "" {
		ev.VerifierID = e.cfg.Producer
	}
	p := bus.Partition(ev.PartitionKey(), e.cfg.Partitions)
	// A batch is closed before this event would take its encoded size
	// past the bus's message size (the event fields are bounded, fields.go,
	// so one event always fits; should it not, publishSplit sets it aside).
	size := eventBound(ev)
	if len(c.parts[p]) > 0 && c.partBytes[p]+size > c.maxBytes {
		c.seal(p)
	}
	if len(c.parts[p]) == 0 {
		c.partBytes[p] = batchOverhead(e.cfg.Producer, c.prefix)
	}
	c.partBytes[p] += size
	if c.parts[p] == nil {
		c.parts[p] = make([]event.Event, 0, e.cfg.MaxBatch)
	}
	if len(c.parts[p]) == 0 {
		c.partFirst[p] = c.seq
	}
	if e.wal != nil {
		c.walBuf = e.wal.event(p, ev, c.walBuf)
	}
	c.parts[p] = append(c.parts[p], *ev)
	if it.w != nil {
		c.waiters = append(c.waiters, it.w)
	}
	if len(c.parts[p]) >= e.cfg.MaxBatch {
		c.seal(p)
	}
}

// take handles it and whatever else is queued (up to a bound), then
// commits them as one group and releases their Emit calls.
func (c *collector) take(it *emitItem) {
	c.maxBytes = c.e.batchLimit()
	c.add(it)
more:
	for range 4096 {
		select {
		case it := <-c.e.in:
			c.add(&it)
		default:
			break more
		}
	}
	if len(c.waiters) > 0 {
		ok := c.commit()
		for _, w := range c.waiters {
			w <- ok
		}
		clear(c.waiters)
		c.waiters = c.waiters[:0]
	}
	c.publish()
}

// drain takes whatever is queued, until the queue is empty.
func (c *collector) drain() {
	for {
		select {
		case it := <-c.e.in:
			c.take(&it)
		default:
			return
		}
	}
}

// trim drops from the durable log what is older than every open batch.
func (c *collector) trim() {
	e := c.e
	if e.wal == nil {
		return
	}
	low := c.seq + 1
	for p := range c.parts {
		if len(c.parts[p]) > 0 {
			low = min(low, c.partFirst[p])
		}
	}
	if err := e.wal.trim(low, c.seq+1); err != nil {
		if failed, _, _ := e.wal.health(); failed != nil {
			c.commit() // the rotation failed: report and reopen
		} else if !c.trimFailed {
			e.log.Error("durable event log: cannot delete an acknowledged segment", "err", err)
			c.trimFailed = true
		}
	}
}

// send publishes a batch, or spools it while the bus is down, the spool
// holds older batches (order), or too many batches await acknowledgement.
func (e *Emitter) send(m bus.Message, n int) {
	if !e.offline.Load() && e.spool.empty() && len(e.inflight) < cap(e.inflight) {
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.PublishTimeout)
		ack, err := e.cfg.Publisher.Publish(ctx, m)
		cancel()
		if err == nil {
			e.inflight <- inflight{ack: ack, msg: m, n: n}
			return
		}
		if errors.Is(err, bus.ErrTooLarge) {
			// Refused whole, and it would be again: the bus is up. The
			// replayer publishes it split (replayOne); the spool keeps
			// the batches after it in order meanwhile.
			now := time.Now().UnixNano()
			if last := e.lastBigLog.Load(); now-last > int64(10*time.Second) && e.lastBigLog.CompareAndSwap(last, now) {
				e.log.Warn("event batch larger than the bus accepts; publishing it split", "batch", m.BatchID, "bytes", len(m.Data), "events", n, "err", err)
			}
		} else {
			e.goOffline(err)
			m.Resent = true // a failed publish may still have reached the bus
		}
	}
	e.toSpool(m, n)
}

func (e *Emitter) goOffline(err error) {
	if !e.offline.Swap(true) {
		e.log.Warn("event bus unreachable; spooling usage events to disk", "err", err, "spool", e.spool.dir)
	}
	e.poke()
}

func (e *Emitter) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *Emitter) toSpool(m bus.Message, n int) {
	err := e.spool.put(m, n)
	if e.wal != nil {
		e.wal.done(m.BatchID) // in the (fsynced) spool, or lost either way
	}
	if err != nil {
		e.drop(n, err.Error())
		return
	}
	e.spooled.Add(uint64(n))
	e.poke()
}

// reapAcks waits for acknowledgements in publish order; a batch the bus
// failed to store goes to the spool.
func (e *Emitter) reapAcks() {
	defer close(e.ackDone)
	for f := range e.inflight {
		select {
		case <-f.ack.Done():
		case <-e.abandon:
			// Closing and out of time: keep the batch on disk. If the bus
			// stores it after all, the next run's replay is deduplicated by
			// its batch id, or by event id (Resent).
			f.msg.Resent = true
			e.toSpool(f.msg, f.n)
			continue
		}
		if err := f.ack.Err(); err != nil {
			// A timeout or a lost connection: the bus may have it anyway.
			// Too large (a Kafka broker's limit below the producer's):
			// the bus is up, the replayer splits it.
			if !errors.Is(err, bus.ErrTooLarge) {
				e.goOffline(err)
			}
			f.msg.Resent = true
			e.toSpool(f.msg, f.n)
			continue
		}
		if e.wal != nil {
			e.wal.done(f.msg.BatchID)
		}
		e.published.Add(uint64(f.n))
	}
}

// replay publishes spooled batches, oldest first, one at a time, until the
// spool is empty; then the emitter publishes directly again. Before each
// batch it moves what the backlog (recovered batches waiting in the log)
// can put in the spool.
func (e *Emitter) replay() {
	defer close(e.replayDone)
	backoff := 100 * time.Millisecond
	rl := replayLog{e: e}
	for {
		err := e.moveBacklog()
		var seq uint64
		var m bus.Message
		var n int
		ok := false
		if err == nil {
			seq, m, n, ok, err = e.spool.oldest()
			if err != nil {
				n, _ := e.spool.remove(seq)
				e.log.Error("unreadable spool file removed; its events are lost", "err", err, "events", n)
				e.drop(n, "unreadable spool file")
				continue
			}
		}
		if err == nil && !ok {
			if _, waiting := e.backlog.len(); waiting == 0 {
				if e.offline.Swap(false) {
					e.log.Info("event bus reachable again; spool replayed", "failed_attempts", rl.fails)
				}
				rl = replayLog{e: e}
				select {
				case <-e.wake:
					continue
				case <-e.replayStop:
					return
				}
			}
			err = errors.New("backlog not moved") // a spool write error: retry later
		}
		if err == nil {
			err = e.replayOne(seq, m, n)
		}
		rl.note(err)
		if err != nil {
			e.offline.Store(true)
			select {
			case <-time.After(backoff):
			case <-e.replayStop:
				return
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// replayOne publishes spooled batch seq and removes it. A batch whose
// publish was tried before goes marked Resent; its file is marked before
// the publish, so that it goes marked if the file outlives it.
func (e *Emitter) replayOne(seq uint64, m bus.Message, n int) error {
	if seq == e.tried {
		m.Resent = true
	}
	if err := e.spool.markResent(seq); err != nil && !e.markFailed {
		// Published all the same: it is not lost, but should its
		// removal fail too, the next start may send it again unmarked.
		e.log.Error("spool: cannot mark a batch as tried before replaying it", "err", err)
		e.markFailed = true
	}
	dead := 0
	err := e.publishWait(m)
	if errors.Is(err, bus.ErrTooLarge) {
		dead, err = e.publishSplit(m, err)
	}
	if err != nil {
		e.tried = seq
		return err
	}
	if _, err := e.spool.remove(seq); err != nil {
		e.log.Error("spool", "err", err)
	}
	e.replayed.Add(uint64(n - dead))
	e.published.Add(uint64(n - dead))
	return nil
}

// moveBacklog moves the backlog's batches into the spool while they fit
// (the replayer only). A batch too big for even an empty spool is
// published directly. It reports an error if a batch could be neither.
func (e *Emitter) moveBacklog() error {
	bl := e.backlog
	for bl != nil {
		b, ok := bl.front()
		if !ok {
			return nil
		}
		if !e.spool.has(b.id) {
			m := e.recoveredMsg(&b)
			err := e.spool.put(m, len(b.events))
			if errors.Is(err, ErrSpoolFull) && e.spool.empty() {
				dead := 0
				err = e.publishWait(m)
				if errors.Is(err, bus.ErrTooLarge) {
					dead, err = e.publishSplit(m, err)
				}
				if err == nil {
					e.published.Add(uint64(len(b.events) - dead))
				}
			} else if errors.Is(err, ErrSpoolFull) {
				return nil // after the next replayed batch
			}
			if err != nil {
				return err
			}
		}
		emptied, err := bl.pop()
		if err != nil {
			e.log.Error("durable log backlog", "err", err)
		}
		if emptied {
			e.log.Info("durable log backlog moved into the spool")
		}
	}
	return nil
}

func (e *Emitter) publishWait(m bus.Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.PublishTimeout)
	ack, err := e.cfg.Publisher.Publish(ctx, m)
	cancel()
	if err != nil {
		return err
	}
	select {
	case <-ack.Done():
		return ack.Err()
	case <-e.replayStop:
		return errors.New("verifier: emitter closing")
	}
}

// Close stops intake, batches what is queued, waits for outstanding
// acknowledgements (spooling failures), tries to drain the spool until ctx
// ends, and leaves anything left on disk for the next run.
func (e *Emitter) Close(ctx context.Context) error {
	if e.closing.Swap(true) {
		return nil
	}
	close(e.stop)
	<-e.done
	close(e.inflight)
	select {
	case <-e.ackDone:
	case <-ctx.Done():
		close(e.abandon)
		<-e.ackDone
	}
	// Give the replayer until ctx ends to empty the spool and the backlog.
	for (!e.spool.empty() || e.backlogWaiting()) && ctx.Err() == nil {
		e.poke()
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	close(e.replayStop)
	<-e.replayDone
	var errs []error
	if e.wal != nil {
		// Every batch is acknowledged or in the spool: the log goes.
		if err := e.wal.close(true); err != nil {
			e.log.Error("durable event log", "err", err)
		}
		if _, n, first := e.wal.health(); n > 0 {
			errs = append(errs, fmt.Errorf("verifier: the durable event log failed %d times (events were not crash-safe meanwhile); first: %w", n, first))
		}
		e.backlog.close()
	}
	defer unlockDataDir(e.lock)
	if _, n := e.backlog.len(); n > 0 {
		e.log.Warn("recovered usage events left in the durable log backlog for the next run", "events", n)
		errs = append(errs, fmt.Errorf("verifier: %d recovered events left in the spool backlog (durable log directory)", n))
	}
	if b, n, _ := e.spool.stats(); b > 0 {
		e.log.Warn("usage events left in the spool for the next run", "batches", b, "events", n, "spool", e.spool.dir)
		errs = append(errs, fmt.Errorf("verifier: %d events left in the spool at %s", n, e.spool.dir))
	}
	return errors.Join(errs...)
}

func (e *Emitter) backlogWaiting() bool {
	_, n := e.backlog.len()
	return n > 0
}

// bootEpoch is this process's start time in ms (base 36) and 20 random
// bits: batch ids are deduplication keys, so two producers must never
// share one.
func bootEpoch() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	r := uint32(b[0])<<12 | uint32(b[1])<<4 | uint32(b[2])>>4
	return strconv.FormatInt(time.Now().UnixMilli(), 36) + "." + strconv.FormatUint(uint64(r), 36)
}
