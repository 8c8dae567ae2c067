// Package kafkabus is the Kafka adapter of internal/bus, on
// github.com/segmentio/kafka-go. Event batches go to a partitioned topic
// (partition chosen by bus.Partition, so every backend agrees), key state to
// a compacted topic, decisions and dead letters to topics of their own.
//
// Kafka has no idempotent producer in kafka-go: a retried produce request
// can store a batch twice. Duplicates carry the same batch id (ce-id) and
// are dropped downstream.
package kafkabus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/keymeter/keymeter/internal/bus"
)

var _ bus.Bus = (*Bus)(nil)

// Option configures a Bus beyond its Config.
type Option func(*options) error

type options struct {
	log *slog.Logger
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return errors.New("kafkabus: WithLogger: nil logger")
		}
		o.log = l
		return nil
	}
}

// Bus is keymeter's bus on a Kafka cluster.
type Bus struct {
	cfg       Config
	log       *slog.Logger
	addr      net.Addr
	transport *kafka.Transport
	client    *kafka.Client
	dialer    *kafka.Dialer
	pub       *Publisher
	// sync writes key state, decisions and dead letters, one call at a time
	// acknowledged; topic per message.
	sync  *kafka.Writer
	rates *rates
	links *linkState

	closeOnce sync.Once
	closeErr  error
}

// New connects to the brokers, creates the topics that are missing and
// checks the ones that exist. Unreachable brokers are retried with backoff
// until ctx ends (30s if ctx has no deadline).
func New(ctx context.Context, cfg Config, opts ...Option) (*Bus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{log: slog.Default()}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	cfg = cfg.withDefaults()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	log := o.log.With("bus", "kafka")
	// A transport of our own: kafka-go's shared default caches metadata,
	// so a topic created elsewhere looks missing for seconds.
	transport := &kafka.Transport{
		ClientID:    cfg.ClientID,
		DialTimeout: 5 * time.Second,
		IdleTimeout: 30 * time.Second,
		MetadataTTL: 5 * time.Second,
	}
	b := &Bus{
		cfg:       cfg,
		log:       log,
		addr:      kafka.TCP(cfg.Brokers...),
		transport: transport,
		dialer: &kafka.Dialer{
			ClientID:  cfg.ClientID,
			Timeout:   5 * time.Second,
			DualStack: true,
		},
		links: &linkState{log: log},
	}
	b.client = &kafka.Client{Addr: b.addr, Transport: transport, Timeout: 10 * time.Second}
	// Dial first: kafka-go's transport reports a refused connection as
	// "broker not available" and, having failed once, waits a metadata TTL
	// before it looks again.
	if err := retry(ctx, b.links, "connect", b.dialAny); err != nil {
		return nil, fmt.Errorf("kafkabus: no broker reachable at %v: %w", cfg.Brokers, err)
	}
	if err := b.ensureTopics(ctx); err != nil {
		transport.CloseIdleConnections()
		return nil, err
	}
	codec, err := compression(cfg.Compression)
	if err != nil {
		return nil, err
	}
	b.sync = &kafka.Writer{
		Addr:            b.addr,
		Balancer:        KeyBalancer{},
		MaxAttempts:     cfg.WriteAttempts,
		WriteBackoffMin: 50 * time.Millisecond,
		WriteBackoffMax: time.Second,
		BatchTimeout:    time.Millisecond,
		BatchBytes:      int64(cfg.MaxMessageBytes),
		RequiredAcks:    kafka.RequireAll,
		Compression:     codec,
		Transport:       transport,
		ErrorLogger:     kafkaLogger(log),
	}
	b.pub = newPublisher(b, codec)
	b.rates = newRates(b)
	log.Debug("connected", "brokers", cfg.Brokers, "events", cfg.EventsTopic, "partitions", cfg.Partitions)
	return b, nil
}

// Publisher returns the bus's event batch publisher.
func (b *Bus) Publisher() bus.Publisher { return b.pub }

// Partitions is the number of event partitions.
func (b *Bus) Partitions() int { return b.cfg.Partitions }

// Config returns the configuration in force, defaults filled in.
func (b *Bus) Config() Config { return b.cfg }

// Close flushes pending publishes (bounded by ctx) and closes the writers.
// Consumers and watches are closed by their owners.
func (b *Bus) Close(ctx context.Context) error {
	b.closeOnce.Do(func() {
		errs := []error{b.pub.close(ctx), b.rates.close(ctx)}
		done := make(chan error, 1)
		go func() { done <- b.sync.Close() }()
		select {
		case err := <-done:
			errs = append(errs, err)
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("kafkabus: close: %w", ctx.Err()))
		}
		b.transport.CloseIdleConnections()
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

// dialAny succeeds once one bootstrap broker accepts a connection.
func (b *Bus) dialAny() error {
	var errs []error
	for _, addr := range b.cfg.Brokers {
		c, err := (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", addr)
		if err == nil {
			return c.Close()
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// topicSpec is one topic this bus needs.
type topicSpec struct {
	name       string
	partitions int
	configs    []kafka.ConfigEntry
}

func (b *Bus) topics() []topicSpec {
	maxBytes := kafka.ConfigEntry{ConfigName: "max.message.bytes", ConfigValue: fmt.Sprint(b.cfg.MaxMessageBytes)}
	return []topicSpec{
		{b.cfg.EventsTopic, b.cfg.Partitions, []kafka.ConfigEntry{maxBytes}},
		{b.cfg.KeysTopic, b.cfg.KeyPartitions, []kafka.ConfigEntry{
			// Latest value per key id wins, as in schema registries.
			{ConfigName: "cleanup.policy", ConfigValue: "compact"},
			maxBytes,
		}},
		{b.cfg.DecisionsTopic, b.cfg.DecisionPartitions, []kafka.ConfigEntry{maxBytes}},
		// One partition: dead letters are read whole, in order, by operators.
		{b.cfg.DeadLetterTopic, 1, []kafka.ConfigEntry{maxBytes}},
	}
}

// ensureTopics creates missing topics and checks that existing ones have
// the partition counts the config asks for.
func (b *Bus) ensureTopics(ctx context.Context) error {
	specs := b.topics()
	req := &kafka.CreateTopicsRequest{}
	for _, s := range specs {
		req.Topics = append(req.Topics, kafka.TopicConfig{
			Topic:             s.name,
			NumPartitions:     s.partitions,
			ReplicationFactor: b.cfg.ReplicationFactor,
			ConfigEntries:     s.configs,
		})
	}
	var res *kafka.CreateTopicsResponse
	err := retry(ctx, b.links, "create topics", func() (err error) {
		res, err = b.client.CreateTopics(ctx, req)
		return err
	})
	if err != nil {
		return fmt.Errorf("kafkabus: create topics on %v: %w", b.cfg.Brokers, err)
	}
	for _, s := range specs {
		if err := res.Errors[s.name]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("kafkabus: create topic %s: %w", s.name, err)
		}
	}
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.name
	}
	// Topic creation is asynchronous: wait until every topic has leaders.
	for {
		md, err := b.client.Metadata(ctx, &kafka.MetadataRequest{Topics: names})
		if err != nil {
			return fmt.Errorf("kafkabus: metadata: %w", err)
		}
		ready, problem := 0, ""
		for _, s := range specs {
			for _, t := range md.Topics {
				if t.Name != s.name {
					continue
				}
				switch {
				case t.Error != nil:
					problem = fmt.Sprintf("topic %s: %v", s.name, t.Error)
				case len(t.Partitions) != s.partitions && s.name != b.cfg.DeadLetterTopic:
					return fmt.Errorf("kafkabus: topic %s exists with %d partitions, config asks for %d; "+
						"use another topic name or set the config to match", s.name, len(t.Partitions), s.partitions)
				default:
					leaders := true
					for _, p := range t.Partitions {
						if p.Leader.Host == "" {
							leaders = false
							problem = fmt.Sprintf("topic %s partition %d has no leader", s.name, p.ID)
						}
					}
					if leaders {
						ready++
					}
				}
			}
		}
		if ready == len(specs) {
			b.checkCompaction(ctx)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafkabus: topics not ready (%s): %w", problem, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// checkCompaction warns when an existing key-state topic is not compacted:
// it would then lose keys to retention instead of keeping the latest value.
func (b *Bus) checkCompaction(ctx context.Context) {
	res, err := b.client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{
		Resources: []kafka.DescribeConfigRequestResource{{
			ResourceType: kafka.ResourceTypeTopic,
			ResourceName: b.cfg.KeysTopic,
			ConfigNames:  []string{"cleanup.policy"},
		}},
	})
	if err != nil || len(res.Resources) == 0 || res.Resources[0].Error != nil {
		b.log.Debug("cannot read the key topic's cleanup.policy", "topic", b.cfg.KeysTopic, "err", err)
		return
	}
	for _, e := range res.Resources[0].ConfigEntries {
		if e.ConfigName == "cleanup.policy" && !strings.Contains(e.ConfigValue, "compact") {
			b.log.Warn("key-state topic is not compacted: old keys will be lost to retention; "+
				"set cleanup.policy=compact on it", "topic", b.cfg.KeysTopic, "cleanup.policy", e.ConfigValue)
		}
	}
}

// offsets returns the first and next (high-water mark) offsets of the given
// partitions of a topic.
func (b *Bus) offsets(ctx context.Context, topic string, partitions []int) (first, next map[int]int64, err error) {
	reqs := make([]kafka.OffsetRequest, 0, 2*len(partitions))
	for _, p := range partitions {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	var res *kafka.ListOffsetsResponse
	err = retry(ctx, b.links, "list offsets", func() (err error) {
		res, err = b.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
		if err == nil {
			for _, po := range res.Topics[topic] {
				if po.Error != nil {
					return fmt.Errorf("partition %d: %w", po.Partition, po.Error)
				}
			}
		}
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("kafkabus: list offsets of %s: %w", topic, err)
	}
	first, next = map[int]int64{}, map[int]int64{}
	for _, po := range res.Topics[topic] {
		first[po.Partition] = po.FirstOffset
		next[po.Partition] = po.LastOffset
	}
	for _, p := range partitions {
		if _, ok := next[p]; !ok {
			return nil, nil, fmt.Errorf("kafkabus: list offsets of %s: partition %d missing from the answer", topic, p)
		}
	}
	return first, next, nil
}

// partitionReader reads one partition from offset, outside any group.
func (b *Bus) partitionReader(topic string, partition int, offset int64) (*kafka.Reader, error) {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:        b.cfg.Brokers,
		Topic:          topic,
		Partition:      partition,
		Dialer:         b.dialer,
		MinBytes:       1,
		MaxBytes:       b.cfg.MaxMessageBytes,
		MaxWait:        100 * time.Millisecond,
		ReadBackoffMin: 50 * time.Millisecond,
		ReadBackoffMax: time.Second,
		MaxAttempts:    1 << 30, // ride out broker restarts; ctx bounds the wait
		ErrorLogger:    kafkaLogger(b.log),
	})
	if err := r.SetOffset(offset); err != nil {
		_ = r.Close()
		return nil, fmt.Errorf("kafkabus: %s/%d: set offset %d: %w", topic, partition, offset, err)
	}
	return r, nil
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// KeyBalancer is a kafka-go balancer that puts a message on partition
// bus.Partition(key, n), the mapping every keymeter backend and tool shares
// (kafka-go's Hash balancer uses another hash). Foreign producers writing to
// the events topic with kafka-go should use it too.
type KeyBalancer struct{}

func (KeyBalancer) Balance(msg kafka.Message, partitions ...int) int {
	return partitions[bus.Partition(string(msg.Key), len(partitions))]
}

func compression(name string) (kafka.Compression, error) {
	switch name {
	case "", "none":
		return 0, nil
	case "gzip":
		return kafka.Gzip, nil
	case "snappy":
		return kafka.Snappy, nil
	case "lz4":
		return kafka.Lz4, nil
	case "zstd":
		return kafka.Zstd, nil
	}
	return 0, fmt.Errorf("kafkabus: compression %q unknown", name)
}

// kafkaLogger routes kafka-go's own per-attempt error lines to debug level:
// state changes are logged once by linkState instead.
func kafkaLogger(log *slog.Logger) kafka.Logger {
	return kafka.LoggerFunc(func(msg string, args ...any) {
		if log.Enabled(context.Background(), slog.LevelDebug) {
			log.Debug("kafka-go: " + fmt.Sprintf(msg, args...))
		}
	})
}

// linkState logs connectivity once per change, not once per failed call.
type linkState struct {
	log  *slog.Logger
	mu   sync.Mutex
	down bool
}

func (l *linkState) observe(what string, err error) {
	if err != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return
	}
	// A Kafka error code means the broker answered: the link is up, the
	// request met a transient state (a leader moving, a topic being made).
	var kerr kafka.Error
	if err != nil && errors.As(err, &kerr) && kerr != kafka.BrokerNotAvailable {
		l.log.Debug("kafka error", "op", what, "err", err)
		err = nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err != nil && !l.down:
		l.down = true
		l.log.Warn("kafka unavailable, retrying", "op", what, "err", err)
	case err == nil && l.down:
		l.down = false
		l.log.Info("kafka available again", "op", what)
	}
}

// retry calls fn with exponential backoff until it succeeds or ctx ends.
func retry(ctx context.Context, links *linkState, what string, fn func() error) error {
	backoff := 50 * time.Millisecond
	for {
		err := fn()
		links.observe(what, err)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		if !retriable(err) {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// retriable: connection problems and Kafka errors marked temporary.
func retriable(err error) bool {
	var perm permanent
	if errors.As(err, &perm) {
		return false
	}
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		// The transport's word for "could not connect".
		return kerr.Temporary() || kerr == kafka.BrokerNotAvailable
	}
	return true
}
