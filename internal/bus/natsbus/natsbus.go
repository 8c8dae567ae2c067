// Package natsbus is the bus on NATS JetStream: event batches on one stream
// with a subject per partition, the key-state log in a KV bucket, decisions
// and dead letters on streams of their own.
//
// Without a NATS cluster, the bus can run nats-server in the process
// (WithEmbeddedServer; the bus owns it and Close stops it). That server lets
// in only the holder of one nkey, whose seed it creates in a 0600 file on
// first start: anyone else on the machine could otherwise read every event
// and write key states into the bucket. It serves in-process connections,
// and listens on loopback only when asked.
package natsbus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymeter/keymeter/internal/bus"
)

// Config configures the NATS bus. Zero values take the defaults shown.
type Config struct {
	URL              string        // nats://127.0.0.1:4222; ignored with an embedded server
	CredsFile        string        // a NATS .creds file (JWT and seed) or an nkey seed file; ignored with an embedded server
	Prefix           string        // "keymeter": subjects keymeter.events.<p>, keymeter.decisions, keymeter.deadletter
	Partitions       int           // 8
	MaxAge           time.Duration // 72h: events stream retention
	DuplicateWindow  time.Duration // 10m: a batch id re-published within it is dropped by the server
	Replicas         int           // 1 (3 in a production cluster)
	MaxPending       int           // 1024 unacknowledged batches before Publish blocks
	PublishTimeout   time.Duration // 10s: a batch not acknowledged by then fails
	ConsumerPrefetch int           // batches pulled ahead per partition: 64, or 16 with an embedded server (see embeddedPrefetch)
}

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Prefix == "" {
		c.Prefix = "keymeter"
	}
	def(&c.Partitions, 8)
	def(&c.Replicas, 1)
	def(&c.MaxPending, 1024)
	def(&c.ConsumerPrefetch, 64)
	defDur(&c.MaxAge, 72*time.Hour)
	defDur(&c.DuplicateWindow, 10*time.Minute)
	defDur(&c.PublishTimeout, 10*time.Second)
	return c
}

// Validate reports every problem of the configuration (zero fields take
// their defaults); it changes nothing.
func (c *Config) Validate() error {
	d := c.withDefaults()
	var errs []error
	if strings.ContainsAny(d.Prefix, " .*>") {
		errs = append(errs, fmt.Errorf("natsbus: prefix %q must be one subject token (no spaces, dots or wildcards)", d.Prefix))
	}
	if d.Partitions < 1 || d.Partitions > 1024 {
		errs = append(errs, fmt.Errorf("natsbus: partitions %d out of range 1-1024", d.Partitions))
	}
	if d.DuplicateWindow > d.MaxAge {
		errs = append(errs, fmt.Errorf("natsbus: duplicate-window %s longer than max-age %s", d.DuplicateWindow, d.MaxAge))
	}
	if d.Replicas < 1 || d.Replicas > 5 {
		errs = append(errs, fmt.Errorf("natsbus: replicas %d out of range 1-5", d.Replicas))
	}
	if d.MaxPending < 1 {
		errs = append(errs, fmt.Errorf("natsbus: max-pending %d must be at least 1", d.MaxPending))
	}
	if d.PublishTimeout < 0 || d.MaxAge < 0 || d.ConsumerPrefetch < 0 {
		errs = append(errs, errors.New("natsbus: publish-timeout, max-age and consumer-prefetch must not be negative"))
	}
	return errors.Join(errs...)
}

// embeddedPrefetch is the default ConsumerPrefetch with an embedded
// server: in process a pull is answered at once, and the prefetched
// batches share the heap with the server's own caches (bench pipeline: 64
// per partition held ~70 MB of messages in the client).
const embeddedPrefetch = 16

// Option configures New.
type Option func(*options) error

type options struct {
	log        *slog.Logger
	embedded   *Embedded
	start      *EmbeddedConfig
	leasePause *atomic.Bool
}

// WithLeasePause is fault injection for tests and chaos runs: while
// *paused is true, the partition-lease consumers of this bus neither
// heartbeat nor read the lease table, but go on reading the partitions
// they hold, like a process that is paused (SIGSTOP, a long GC pause, CPU
// starvation) with pull requests still outstanding on the server.
func WithLeasePause(paused *atomic.Bool) Option {
	return func(o *options) error {
		if paused == nil {
			return errors.New("natsbus: WithLeasePause(nil)")
		}
		o.leasePause = paused
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return errors.New("natsbus: WithLogger(nil)")
		}
		o.log = l
		return nil
	}
}

// WithEmbedded connects to an embedded server that the caller started and
// shuts down (in-process when it does not listen on TCP).
func WithEmbedded(e *Embedded) Option {
	return func(o *options) error {
		if e == nil {
			return errors.New("natsbus: WithEmbedded(nil)")
		}
		o.embedded = e
		return nil
	}
}

// WithEmbeddedServer starts an embedded server for this bus, which owns
// it: Close shuts it down after the connection is drained. Other buses can
// share it through Embedded and WithEmbedded.
func WithEmbeddedServer(cfg EmbeddedConfig) Option {
	return func(o *options) error {
		o.start = &cfg
		return nil
	}
}

// Bus is the JetStream adapter of bus.Bus.
type Bus struct {
	// reconnected is closed and replaced on every reconnect, so that
	// watches can start again at once instead of waiting for their
	// heartbeats to notice that the server restarted.
	rmu         sync.Mutex
	reconnected chan struct{}

	cfg      Config
	log      *slog.Logger
	embedded *Embedded    // the server this bus connects to in-process or on loopback, if any
	paused   *atomic.Bool // see WithLeasePause; nil: never
	owned    bool         // embedded was started by New and is shut down by Close
	nc       *nats.Conn
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	pub      *publisher
	subj     struct{ events, decisions, deadletter string }
	streams  struct{ events, decisions, deadletter string }
}

var (
	_ bus.Bus       = (*Bus)(nil)
	_ bus.Publisher = (*publisher)(nil)
	_ bus.Consumer  = (*consumer)(nil)
)

// New connects and creates (idempotently) the streams and the KV bucket.
func New(ctx context.Context, cfg Config, opts ...Option) (*Bus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	prefetchSet := cfg.ConsumerPrefetch != 0
	cfg = cfg.withDefaults()
	o := options{log: slog.Default()}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if o.start != nil && o.embedded != nil {
		return nil, errors.New("natsbus: WithEmbedded and WithEmbeddedServer together")
	}
	if !prefetchSet && (o.start != nil || o.embedded != nil) {
		cfg.ConsumerPrefetch = embeddedPrefetch
	}
	b := &Bus{cfg: cfg, log: o.log.With("bus", "nats"), reconnected: make(chan struct{}), embedded: o.embedded, paused: o.leasePause}
	if o.start != nil {
		e, err := startEmbedded(*o.start, o.log)
		if err != nil {
			return nil, err
		}
		b.embedded, b.owned = e, true
	}
	if err := b.connect(ctx); err != nil {
		if b.owned {
			b.embedded.Shutdown()
		}
		return nil, err
	}
	b.pub = newPublisher(b)
	return b, nil
}

// connect connects and provisions.
func (b *Bus) connect(ctx context.Context) error {
	cfg := b.cfg
	up := strings.ToUpper(cfg.Prefix)
	b.subj.events = cfg.Prefix + ".events"
	b.subj.decisions = cfg.Prefix + ".decisions"
	b.subj.deadletter = cfg.Prefix + ".deadletter"
	b.streams.events = up + "_EVENTS"
	b.streams.decisions = up + "_DECISIONS"
	b.streams.deadletter = up + "_DEADLETTER"

	url := cfg.URL
	nopts := []nats.Option{
		nats.Name("keymeter"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(false),
		// Logged once per state change, never per message.
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil && !nc.IsClosed() && !nc.IsDraining() {
				b.log.Warn("nats disconnected, reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
			b.rmu.Lock()
			close(b.reconnected)
			b.reconnected = make(chan struct{})
			b.rmu.Unlock()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { b.log.Warn("nats async error", "err", err) }),
	}
	switch {
	case b.embedded != nil:
		url = b.embedded.URL()
		eo, err := b.embedded.connectOptions()
		if err != nil {
			return err
		}
		nopts = append(nopts, eo...)
	case cfg.CredsFile != "":
		auth, err := credsOption(cfg.CredsFile)
		if err != nil {
			return err
		}
		nopts = append(nopts, auth)
	}
	if url == "" {
		url = nats.DefaultURL
	}
	nc, err := nats.Connect(url, nopts...)
	if err != nil {
		return fmt.Errorf("natsbus: connect %s: %w", Redact(url), err)
	}
	b.nc = nc
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxPending*2),
		jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout))
	if err != nil {
		nc.Close()
		return fmt.Errorf("natsbus: jetstream: %w", err)
	}
	b.js = js
	if err := b.provision(ctx); err != nil {
		nc.Close()
		return err
	}
	return nil
}

// credsOption authenticates with a .creds file (user JWT and seed, for
// servers in operator mode) or a file holding only an nkey seed (the
// embedded server's CredsFile, or nats-server's nkey users).
func credsOption(file string) (nats.Option, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("natsbus: credentials: %w", err)
	}
	if bytes.Contains(raw, []byte("BEGIN NATS USER JWT")) {
		return nats.UserCredentials(file), nil
	}
	o, err := nats.NkeyOptionFromSeed(file)
	if err != nil {
		return nil, fmt.Errorf("natsbus: credentials %s: neither a .creds file nor an nkey seed: %w", file, err)
	}
	return o, nil
}

// Redact hides the user and password of every URL in a comma-separated
// list of server URLs, for logs and errors.
func Redact(urls string) string {
	parts := strings.Split(urls, ",")
	for k, url := range parts {
		if i := strings.Index(url, "@"); i >= 0 {
			if j := strings.Index(url, "://"); j >= 0 && j < i {
				parts[k] = url[:j+3] + "***" + url[i:]
			}
		}
	}
	return strings.Join(parts, ",")
}

// provision creates or updates the streams and the bucket; safe to run from
// every process at every start.
func (b *Bus) provision(ctx context.Context) error {
	streams := []jetstream.StreamConfig{
		{
			Name: b.streams.events, Subjects: []string{b.subj.events + ".*"},
			Storage: jetstream.FileStorage, Retention: jetstream.LimitsPolicy,
			MaxAge: b.cfg.MaxAge, Duplicates: b.cfg.DuplicateWindow, Replicas: b.cfg.Replicas,
			Description: "keymeter usage event batches, one subject per partition",
		},
		{
			Name: b.streams.decisions, Subjects: []string{b.subj.decisions},
			Storage: jetstream.FileStorage, MaxAge: 30 * 24 * time.Hour, Replicas: b.cfg.Replicas,
			Description: "keymeter detection decisions",
		},
		{
			Name: b.streams.deadletter, Subjects: []string{b.subj.deadletter},
			Storage: jetstream.FileStorage, MaxAge: 30 * 24 * time.Hour, Replicas: b.cfg.Replicas,
			Description: "keymeter messages that could not be processed, with the reason",
		},
	}
	for _, sc := range streams {
		if err := b.ensureStream(ctx, sc); err != nil {
			return fmt.Errorf("natsbus: create stream %s: %w", sc.Name, err)
		}
	}
	kv, err := b.ensureKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: b.cfg.Prefix + "_keys", History: 1, Storage: jetstream.FileStorage,
		Replicas: b.cfg.Replicas, Description: "keymeter key-state log: latest state per key id",
	})
	if err != nil {
		return fmt.Errorf("natsbus: create key-value bucket %s_keys: %w", b.cfg.Prefix, err)
	}
	b.kv = kv
	return nil
}

// apiTry bounds one JetStream API request of apiRetry, apiRetryLimit all
// of them when the caller set no deadline.
const (
	apiTry        = 10 * time.Second
	apiRetryLimit = 2 * time.Minute
)

// apiRetry runs an idempotent JetStream API request (create or update),
// each try bounded by apiTry, again after a timeout or a missing leader
// until ctx ends: in a cluster that just lost a node, a request can go
// unanswered (taken by the dead node, or sent while a leader is elected),
// and waiting out the caller's whole deadline on it would stall the start.
// Without a deadline in ctx, it gives up after apiRetryLimit.
func apiRetry(ctx context.Context, req func(ctx context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, apiRetryLimit)
		defer cancel()
	}
	wait := 100 * time.Millisecond
	for {
		tctx, cancel := context.WithTimeout(ctx, apiTry)
		err := req(tctx)
		cancel()
		if err == nil || ctx.Err() != nil || !(errors.Is(err, context.DeadlineExceeded) || leaderless(err)) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// Partitions is the number of event partitions.
func (b *Bus) Partitions() int { return b.cfg.Partitions }

// Publisher returns the event batch publisher.
func (b *Bus) Publisher() bus.Publisher { return b.pub }

// Conn exposes the connection (for metrics of connection state).
func (b *Bus) Conn() *nats.Conn { return b.nc }

// Embedded is the embedded server this bus connects to, nil if none.
func (b *Bus) Embedded() *Embedded { return b.embedded }

func (b *Bus) partitionSubject(p int) string { return b.subj.events + "." + strconv.Itoa(p) }

// Close flushes pending publishes (bounded by ctx) and disconnects.
func (b *Bus) Close(ctx context.Context) error {
	err := b.pub.Flush(ctx)
	b.pub.close()
	if derr := b.nc.Drain(); derr != nil && err == nil && !errors.Is(derr, nats.ErrConnectionClosed) {
		err = derr
	}
	// Drain is asynchronous; wait for it within ctx.
	for b.nc.IsDraining() {
		select {
		case <-ctx.Done():
			b.nc.Close()
			b.shutdownOwned()
			return errors.Join(err, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	b.nc.Close()
	b.shutdownOwned()
	return err
}

func (b *Bus) shutdownOwned() {
	if b.owned {
		b.embedded.Shutdown()
	}
}

// ---- publisher ----

type pubAck struct {
	done chan struct{}
	err  error
	fut  jetstream.PubAckFuture
}

func (a *pubAck) Done() <-chan struct{} { return a.done }
func (a *pubAck) Err() error {
	select {
	case <-a.done:
		return a.err
	default:
		return errors.New("natsbus: publish not yet acknowledged")
	}
}

// ErrDuplicateNotStored: the server answered a publish as a duplicate of
// a message it has not stored (stream sequence 0). nats-server before
// 2.10.26 (Debian's 2.9.10 among them) stages a message id with sequence 0
// when its leader proposes the message; if that proposal is dropped (the
// leader steps down, its node dies), a retry under the same id is answered
// "duplicate" with sequence 0 until the duplicate window ends, although
// the stream never got the message (nats-server pull request 6415). Such
// an answer is no acknowledgement: the batch stays with its publisher
// (the verifier spools and retries it), and the publisher sends that batch
// under a new message id from then on (see restage).
var ErrDuplicateNotStored = errors.New("server answered duplicate of a message it has not stored (sequence 0)")

// ackErr is the error of a publish acknowledgement: nil when the stream
// stored the message (again, for a duplicate with its sequence).
func ackErr(pa *jetstream.PubAck) error {
	if pa == nil {
		return errors.New("empty publish acknowledgement")
	}
	if pa.Duplicate && pa.Sequence == 0 {
		return ErrDuplicateNotStored
	}
	return nil
}

type publisher struct {
	b      *Bus
	sem    chan struct{}
	queue  chan *pubAck
	closed atomic.Bool
	mu     sync.RWMutex // publishes (read) against close (write)
	once   sync.Once
	wg     sync.WaitGroup
	// staged: batch id -> how many times the server answered it with
	// ErrDuplicateNotStored; the batch's message id gets that suffix.
	staged sync.Map
}

// restage gives batch id a new message id for its next publish: the
// server holds the old one as staged and would answer every retry under it
// with ErrDuplicateNotStored until its duplicate window ends. Should the
// staged copy be stored after all (its proposal was late, not dropped),
// the stream holds the batch twice under one batch id, which consumers
// deduplicate (the aggregator does, by batch id); a lost batch could not
// be recovered at all.
func (p *publisher) restage(id string) {
	for {
		n, loaded := p.staged.LoadOrStore(id, 1)
		if !loaded || p.staged.CompareAndSwap(id, n, n.(int)+1) {
			return
		}
	}
}

// msgID is the Nats-Msg-Id of batch id: the id, with a suffix once the
// server answered it as staged.
func (p *publisher) msgID(id string) string {
	if n, ok := p.staged.Load(id); ok {
		return id + "~" + strconv.Itoa(n.(int))
	}
	return id
}

func newPublisher(b *Bus) *publisher {
	p := &publisher{b: b, sem: make(chan struct{}, b.cfg.MaxPending), queue: make(chan *pubAck, b.cfg.MaxPending)}
	p.wg.Add(1)
	go p.reap()
	return p
}

// reap resolves futures in publish order and frees their slots.
func (p *publisher) reap() {
	defer p.wg.Done()
	for a := range p.queue {
		select {
		case pa := <-a.fut.Ok():
			a.err = ackErr(pa)
		case err := <-a.fut.Err():
			a.err = err
		}
		id := a.fut.Msg().Header.Get(bus.HeaderBatchID)
		if errors.Is(a.err, ErrDuplicateNotStored) {
			p.restage(id)
		} else if a.err == nil {
			p.staged.Delete(id)
		}
		if a.err != nil {
			a.err = fmt.Errorf("natsbus: publish batch %s: %w", id, a.err)
		}
		close(a.done)
		<-p.sem
	}
}

func (p *publisher) Publish(ctx context.Context, m bus.Message) (bus.PubAck, error) {
	if p.closed.Load() {
		return nil, bus.ErrClosed
	}
	if m.BatchID == "" {
		return nil, errors.New("natsbus: message without batch id")
	}
	select {
	case p.sem <- struct{}{}:
	default:
		select {
		case p.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %d batches unacknowledged: %w", bus.ErrBackpressure, cap(p.sem), ctx.Err())
		}
	}
	// Held while the future is queued, so close cannot close the queue
	// under a publish in flight.
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		<-p.sem
		return nil, bus.ErrClosed
	}
	msg := nats.NewMsg(p.b.partitionSubject(bus.Partition(m.Key, p.b.cfg.Partitions)))
	msg.Data = m.Data
	setEnvelope(msg.Header, m)
	fut, err := p.b.js.PublishMsgAsync(msg, jetstream.WithMsgID(p.msgID(m.BatchID)))
	if err != nil {
		<-p.sem
		if errors.Is(err, nats.ErrMaxPayload) {
			// Permanent: the caller splits the batch instead of retrying.
			return nil, fmt.Errorf("natsbus: publish batch %s (%d bytes, max payload %d): %w: %w", m.BatchID, len(m.Data), p.b.nc.MaxPayload(), bus.ErrTooLarge, err)
		}
		return nil, fmt.Errorf("natsbus: publish batch %s: %w", m.BatchID, err)
	}
	a := &pubAck{done: make(chan struct{}), fut: fut}
	p.queue <- a // never blocks: the semaphore bounds the queue
	return a, nil
}

// MaxMessageBytes is the connection's max payload (headers included), 0
// before the first connect (bus.MessageLimiter).
func (p *publisher) MaxMessageBytes() int { return int(p.b.nc.MaxPayload()) }

func setEnvelope(h nats.Header, m bus.Message) {
	h[bus.HeaderBatchID] = []string{m.BatchID}
	h[bus.HeaderSource] = []string{m.Source}
	h[bus.HeaderType] = []string{bus.TypeEventBatch}
	h[bus.HeaderSpecVersion] = []string{"1.0"}
	h[bus.HeaderTime] = []string{time.Now().UTC().Format(time.RFC3339Nano)}
	h[bus.HeaderContentType] = []string{bus.ContentTypeProtobuf}
	if m.Resent {
		h[bus.HeaderResent] = []string{"1"}
	}
}

func (p *publisher) Flush(ctx context.Context) error {
	for {
		if len(p.sem) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natsbus: flush: %d batches unacknowledged: %w", len(p.sem), ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

func (p *publisher) close() {
	p.once.Do(func() {
		p.mu.Lock()
		p.closed.Store(true)
		close(p.queue)
		p.mu.Unlock()
		p.wg.Wait()
	})
}

// reconnects returns a channel closed at the next reconnect.
func (b *Bus) reconnects() <-chan struct{} {
	b.rmu.Lock()
	defer b.rmu.Unlock()
	return b.reconnected
}

// Prefix is the subject prefix of this bus's subjects, streams and bucket.
func (b *Bus) Prefix() string { return b.cfg.Prefix }
