// Package bus declares what keymeter's producers and consumers need from a
// message bus. Adapters live in subpackages (natsbus, kafkabus) and are held
// to the same behaviour by the conformance suite in bustest.
//
// Three logs travel on the bus:
//   - keymeter.events: usage event batches, partitioned by key (see Partition);
//   - keymeter.keys: the key-state log, latest value per key id wins;
//   - keymeter.decisions: detection decisions.
//
// and one dead-letter log, keymeter.deadletter, for messages that could not
// be processed, each with the reason attached. Verifiers sharing rate limits
// exchange best-effort reports on keymeter.ratelimits (see RateTransport).
package bus

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors callers branch on.
var (
	// ErrBackpressure: the publisher's bound on unacknowledged batches was
	// reached and the context ended before room was made.
	ErrBackpressure = errors.New("bus: publisher backpressure")
	// ErrClosed: the publisher or consumer was closed.
	ErrClosed = errors.New("bus: closed")
	// ErrConsumerLost: another process took over this consumer's
	// partitions (its durable consumer was replaced); stop and restart.
	ErrConsumerLost = errors.New("bus: consumer taken over by another process")
	// ErrRangeGone: a range asked of ReadRange is no longer (or never was)
	// in the log: retention removed it, or the log was recreated.
	ErrRangeGone = errors.New("bus: range no longer in the log")
	// ErrRevisionMismatch: a compare-and-set write found a newer record.
	ErrRevisionMismatch = errors.New("bus: key changed since it was read")
	// ErrTooLarge: the message is larger than the bus accepts (NATS max
	// payload, Kafka message size limit). It is permanent: publishing the
	// same message again fails the same way, so the publisher must split
	// it (or set it aside), never retry it as it is.
	ErrTooLarge = errors.New("bus: message too large")
)

// DefaultMaxMessageBytes is the message size a publisher that does not
// report its limit (see MessageLimiter) is assumed to accept: the stock
// nats-server's max_payload (1 MiB).
const DefaultMaxMessageBytes = 1 << 20

// MessageLimiter is implemented by publishers that know the largest
// message the bus accepts.
type MessageLimiter interface {
	// MaxMessageBytes is the largest message (body and headers) the bus
	// accepts now; 0 or less when unknown (not yet connected).
	MaxMessageBytes() int
}

// MaxMessageBytes is p's limit if it reports one, else
// DefaultMaxMessageBytes.
func MaxMessageBytes(p Publisher) int {
	if l, ok := p.(MessageLimiter); ok {
		if n := l.MaxMessageBytes(); n > 0 {
			return n
		}
	}
	return DefaultMaxMessageBytes
}

// Header names carried by every event batch message. Batches travel as
// CloudEvents in binary mode: the attributes are headers, the body is the
// protobuf-encoded keymeter.v1.EventBatch.
const (
	HeaderBatchID     = "ce-id"          // also Nats-Msg-Id on NATS
	HeaderSource      = "ce-source"      // producer id
	HeaderType        = "ce-type"        // TypeEventBatch
	HeaderSpecVersion = "ce-specversion" // "1.0"
	HeaderTime        = "ce-time"        // RFC 3339
	HeaderContentType = "content-type"   // ContentTypeProtobuf
	HeaderReason      = "keymeter-deadletter-reason"
	HeaderOrigin      = "keymeter-deadletter-origin" // "<log>/<partition>/<position>"
	// HeaderResent is "1" on a batch its producer may have published
	// before (a crash-recovered or spooled batch whose first publish was
	// never acknowledged). See Message.Resent.
	HeaderResent = "keymeter-resent"

	TypeEventBatch      = "dev.keymeter.usage.batch.v1"
	ContentTypeProtobuf = "application/protobuf"
)

// Message is one event batch to publish.
type Message struct {
	// Key chooses the partition (see Partition): the key id, or the client
	// network for anonymous traffic.
	Key string
	// BatchID identifies the batch for deduplication: the same id published
	// twice is stored once (NATS) or delivered with the same id (Kafka).
	BatchID string
	// Source is the producer's id (verifier id).
	Source string
	// Data is the protobuf-encoded batch.
	Data []byte
	// Resent marks a batch that may have reached the bus before: its
	// producer published it, crashed or timed out before the answer, and
	// publishes it again (possibly long after the bus's duplicate window,
	// possibly under another batch id). Consumers check a resent batch's
	// events against what is already stored, by event id.
	Resent bool
}

// PubAck is the future of one published batch.
type PubAck interface {
	// Done is closed once the bus has stored the batch or failed to.
	Done() <-chan struct{}
	// Err is nil after Done if the batch was stored.
	Err() error
}

// Publisher publishes event batches. Implementations bound the number of
// unacknowledged batches: Publish blocks when the bound is reached and
// returns an error wrapping ErrBackpressure once ctx ends.
type Publisher interface {
	Publish(ctx context.Context, m Message) (PubAck, error)
	// Flush waits until every batch published so far is acknowledged.
	Flush(ctx context.Context) error
}

// Delivery is one event batch as delivered to a consumer.
type Delivery struct {
	Partition int
	// Position is the batch's place in its partition: the Kafka offset or
	// the JetStream stream sequence. Positions grow within a partition.
	Position uint64
	BatchID  string
	Source   string
	Data     []byte
	// Redelivered is true when the backend knows it delivered this before.
	Redelivered bool
	// Resent is the producer's Message.Resent.
	Resent bool
	// Invalid, when set, says why the message is not a well-formed event
	// batch (missing CloudEvents headers, wrong type). The consumer must
	// dead-letter it with this reason and acknowledge it like any other, so
	// one bad message never stops a partition.
	Invalid string
	// Ref is the adapter's handle for Ack; callers pass it back untouched.
	Ref any
}

// Consumer reads event batches. Within a partition, batches are delivered
// in position order; a batch that is not acknowledged is delivered again
// (to this consumer after AckWait, or to another after this one dies).
type Consumer interface {
	// Fetch returns up to max deliveries, waiting at most wait for the first.
	// It returns an empty slice and no error when nothing arrived in time.
	Fetch(ctx context.Context, max int, wait time.Duration) ([]Delivery, error)
	// Ack acknowledges d and every earlier delivery of its partition.
	Ack(ctx context.Context, d Delivery) error
	// Close stops fetching; unacknowledged deliveries will be redelivered.
	Close(ctx context.Context) error
}

// RangeReader re-reads a recorded range of a partition, for exactly-once
// replay after a crash: the consumer recorded [from, to] before inserting it
// and replays exactly that range with the same deduplication token.
type RangeReader interface {
	ReadRange(ctx context.Context, partition int, from, to uint64, fn func(Delivery) error) error
}

// ConsumerConfig selects what a consumer reads.
type ConsumerConfig struct {
	// Group is the durable consumer / consumer group name. Consumers with
	// the same group share the partitions.
	Group string
	// Partitions limits the consumer to these partitions (NATS); empty
	// means all. Kafka assigns partitions through the group.
	Partitions []int
	// AckWait is how long an unacknowledged delivery waits before it is
	// redelivered (NATS). Default 30s.
	AckWait time.Duration
	// StartAtEnd makes a new group start with batches published from now
	// on instead of the whole retained log (tailing, e.g. logs --follow).
	// On NATS such a group's consumers go away a minute after its last
	// consumer does.
	StartAtEnd bool
	// LeaseTTL, when set (NATS), shares the partitions among the group's
	// live members by leases instead of Partitions: a member whose lease
	// heartbeat stopped for LeaseTTL loses its partitions to the others,
	// and the consumer reports a generation like a Kafka group's (see
	// natsbus). Kafka ignores it: its group does this already.
	LeaseTTL time.Duration
}

// DeadLetter is one message that could not be processed.
type DeadLetter struct {
	Origin string // "<log>/<partition>/<position>" of the original, if known
	Reason string
	Data   []byte
	Time   time.Time
}

// DeadLetters publishes and reads the dead-letter log.
type DeadLetters interface {
	DeadLetter(ctx context.Context, dl DeadLetter) error
	// ReadDeadLetters reads dead letters from the start of the log (for
	// operators and tests), up to max, waiting at most wait.
	ReadDeadLetters(ctx context.Context, max int, wait time.Duration) ([]DeadLetter, error)
}

// KeyUpdate is one change in the key-state log, or the marker that the
// initial snapshot is complete.
type KeyUpdate struct {
	ID       string
	Value    []byte // protobuf-encoded keymeter.v1.KeyState; nil when Deleted
	Deleted  bool
	Revision uint64
	// EndOfSnapshot marks the end of the initial snapshot; ID is empty.
	EndOfSnapshot bool
}

// KeyLog is the key-state log: the latest value per key id.
type KeyLog interface {
	PutKey(ctx context.Context, id string, value []byte) error
	DeleteKey(ctx context.Context, id string) error
	// WatchKeys delivers the latest value of every key, then an update with
	// EndOfSnapshot set, then every later change, until ctx ends (the
	// channel is then closed).
	WatchKeys(ctx context.Context) (<-chan KeyUpdate, error)
	// CompareAndSet is the log's compare-and-set writer, or nil when the
	// backend has none (Kafka). It is a method, not an interface to probe
	// with a type assertion, so that a wrapper around the log never hides
	// it.
	CompareAndSet() KeyCAS
}

// KeyCAS writes a key only if its latest record still has the revision the
// writer read (NATS KV). Writers of read-modify-write changes use it when
// the log has it, so that a stale copy never overwrites a newer change (a
// quota update undoing a revocation).
type KeyCAS interface {
	// PutKeyIf writes value if id's latest revision is rev (0: id must not
	// exist); otherwise it returns an error wrapping ErrRevisionMismatch.
	PutKeyIf(ctx context.Context, id string, value []byte, rev uint64) error
}

// Lagger tells how far a consumer group is behind: batches published but
// not yet acknowledged, per partition. Every Bus is one.
type Lagger interface {
	Lag(ctx context.Context, group string) (map[int]uint64, error)
}

// Decisions publishes and subscribes to detection decisions.
type Decisions interface {
	PublishDecision(ctx context.Context, key string, data []byte) error
	// SubscribeDecisions calls fn for every decision published after the
	// call, until ctx ends.
	SubscribeDecisions(ctx context.Context, fn func(data []byte)) error
	// SubscribeDecisionsSince first replays the decisions published since
	// since, then follows new ones like SubscribeDecisions, so that a
	// verifier started late still enforces blocks that are in force.
	SubscribeDecisionsSince(ctx context.Context, since time.Time, fn func(data []byte)) error
}

// RateReport is one verifier's report of the admissions it counted for
// rate-limited keys (see verifier.RateShare; Data is its encoding).
type RateReport struct {
	Data []byte
	// Time the report was sent, by the sender's clock; zero when the
	// sender did not say (a verifier of an older release on NATS).
	Time time.Time
}

// RateTransport carries rate-limit reports between the verifiers of one
// bus: small, frequent and approximate. Delivery is best effort (a report
// lost or late only loosens the global limit for one period), nothing is
// kept for verifiers started later, and reports are not acknowledged.
type RateTransport interface {
	// PublishRates sends r to every subscriber, this process's included.
	PublishRates(ctx context.Context, r RateReport) error
	// SubscribeRates calls fn, one call at a time, with every report
	// published after it returns, until stop is called; stop returns once
	// fn is no longer running and will not be called again.
	SubscribeRates(ctx context.Context, fn func(RateReport)) (stop func(), err error)
	// MaxReportBytes is the largest Data PublishRates is sure to carry
	// (with room to spare for the transport's own framing): a longer
	// report is split by its sender into reports of this size.
	MaxReportBytes() int
}

// Bus is a whole backend: what `keymeter dev` and the roles wire together.
type Bus interface {
	Publisher() Publisher
	NewConsumer(ctx context.Context, cfg ConsumerConfig) (Consumer, error)
	RangeReader
	DeadLetters
	KeyLog
	Decisions
	Lagger
	// RateTransport is the channel for sharing rate limits between
	// verifiers, or nil when the backend has none. Like CompareAndSet, a
	// method rather than an interface to probe, so a wrapper never hides it.
	RateTransport() RateTransport
	// Partitions is the number of event partitions.
	Partitions() int
	// Close drains pending publishes (bounded by ctx) and disconnects.
	Close(ctx context.Context) error
}

// AckLatest acknowledges every delivery of ds: in each partition present,
// the one with the highest position (Ack covers the earlier ones of its
// partition). Acking only the last delivery of a fetch would leave the
// other partitions' deliveries to come back after AckWait.
func AckLatest(ctx context.Context, c Consumer, ds []Delivery) error {
	latest := map[int]int{} // partition -> index in ds
	for i, d := range ds {
		if j, ok := latest[d.Partition]; !ok || d.Position > ds[j].Position {
			latest[d.Partition] = i
		}
	}
	var errs []error
	for _, i := range latest {
		if err := c.Ack(ctx, ds[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Tail calls fn for every delivery of c until ctx ends (it then returns
// nil), acknowledging each fetch in every partition it came from, even
// when the tail is stopping. A failed ack (the connection recovering)
// means only that those deliveries come again: the tail goes on.
func Tail(ctx context.Context, c Consumer, fn func(Delivery)) error {
	for ctx.Err() == nil {
		ds, err := c.Fetch(ctx, 64, time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, d := range ds {
			fn(d)
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = AckLatest(actx, c, ds)
		cancel()
	}
	return nil
}

// Partition maps a partition key to one of n partitions (FNV-1a), the same
// way on every backend so that tools agree on where a key's events are.
func Partition(key string, n int) int {
	if n <= 1 {
		return 0
	}
	// FNV-1a, inlined: hash/fnv would allocate on every call.
	const offset32, prime32 = 2166136261, 16777619
	h := uint32(offset32)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= prime32
	}
	return int(h % uint32(n))
}
