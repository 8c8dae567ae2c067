package store

import (
	"context"
	"errors"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// Sentinel errors callers branch on.
var (
	// ErrNotFound: the record asked for does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrInvalidQuery: a filter or query parameter was rejected before any SQL ran.
	ErrInvalidQuery = errors.New("store: invalid query")
	// ErrClosed: the store was used after Close.
	ErrClosed = errors.New("store: closed")
)

// EventWriter stores usage events exactly once.
type EventWriter interface {
	// InsertEvents stores events as one block with token as its
	// insert_deduplication_token, and updates the per-minute and per-day
	// rollups (the rollup is inserted first: raw rows stored under a
	// token mean its rollup is stored too). Inserting the same token again (a replay after a crash) is
	// dropped by ClickHouse, also after a restart. The token must be
	// deterministic for the range of the bus partition it covers.
	InsertEvents(ctx context.Context, token string, events []event.Event) error
}

// IntentStore records which bus range a consumer is about to insert, so that
// after a crash it replays exactly that range with the same token.
type IntentStore interface {
	RecordIntent(ctx context.Context, in Intent) error
	// RecordIntents records the intents of one insert at once: all or none.
	// Intents with State IntentDone among them are written done instead
	// (the clear of an earlier insert, carried in the same statement).
	RecordIntents(ctx context.Context, ins []Intent) error
	// Intents returns the consumer's pending intents, oldest first.
	Intents(ctx context.Context, consumer string) ([]Intent, error)
	// ClearIntent marks an intent done (its insert succeeded and was acked).
	ClearIntent(ctx context.Context, consumer, partition, token string) error
	// ClearIntents marks the given intents done at once, without reading
	// them: ins are as recorded (or as Intents returned them).
	ClearIntents(ctx context.Context, ins []Intent) error
}

// UsageReader answers usage questions from the rollups, never raw rows.
type UsageReader interface {
	Usage(ctx context.Context, q UsageQuery) ([]UsagePoint, error)
	// QuotaUsage is a key's usage since periodStart (the start of its quota period).
	QuotaUsage(ctx context.Context, keyID string, periodStart time.Time) (QuotaUsage, error)
	// Baselines is each key's usual per-minute rate over a past window; the
	// detector warm-starts its baselines from it.
	Baselines(ctx context.Context, q BaselineQuery) ([]Baseline, error)
}

// LogReader searches raw events, newest first.
type LogReader interface {
	Logs(ctx context.Context, q LogQuery) (LogPage, error)
}

// DecisionStore keeps every detector decision with its evidence.
type DecisionStore interface {
	WriteDecisions(ctx context.Context, ds []Decision) error
	Decisions(ctx context.Context, q DecisionQuery) ([]Decision, error)
}

// KeyMirror is a read copy of the key table (the bus is the source of truth).
type KeyMirror interface {
	UpsertKeys(ctx context.Context, ks []KeyRecord) error
	Key(ctx context.Context, id string) (KeyRecord, error)
	Keys(ctx context.Context, project string) ([]KeyRecord, error)
}

// Admin covers schema and retention.
type Admin interface {
	// Migrate applies pending migrations; it returns the versions applied.
	Migrate(ctx context.Context) ([]int, error)
	MigrationStatus(ctx context.Context) ([]MigrationState, error)
	// SetRetention changes how long raw events are kept (rollups are kept).
	SetRetention(ctx context.Context, days int) error
	Retention(ctx context.Context) (days int, err error)
	// Count is the number of rows in one of the store's tables (for tests and stats).
	Count(ctx context.Context, table string) (uint64, error)
	Stats(ctx context.Context) ([]TableStats, error)
}

// Store is everything the aggregator, detector and API need.
type Store interface {
	EventWriter
	IntentStore
	UsageReader
	LogReader
	DecisionStore
	KeyMirror
	Admin
	Close(ctx context.Context) error
}

// IntentState is the state of an ingest intent.
type IntentState string

const (
	IntentPending IntentState = "pending"
	IntentDone    IntentState = "done"
	// IntentAborted: the consumer was fenced before inserting; the range is
	// never replayed (the partition's new owner reads it from the bus).
	IntentAborted IntentState = "aborted"
)

// Fencer fences a consumer group's inserts by epoch (the Kafka group
// generation): a member records the epoch it joins at (Fence) before it
// reads the group's pending intents, and, having recorded its own intents,
// reads the highest epoch (MaxFence) before it inserts; one at an older
// epoch aborts (AbortIntent). Either the new member sees the intent and
// replays it under its token, or the old one sees the fence and does not
// insert: the two orders of "write, then read the other's write" cannot
// both miss. This needs reads that see every acknowledged write (one
// ClickHouse server, or a cluster with insert_quorum and
// select_sequential_consistency).
type Fencer interface {
	Fence(ctx context.Context, consumer string, epoch uint64) error
	MaxFence(ctx context.Context, consumer string) (uint64, error)
	AbortIntent(ctx context.Context, consumer, partition, token string) error
	// Overlapping returns the consumer's intents of partition, in any
	// state, whose range meets [first, last].
	Overlapping(ctx context.Context, consumer, partition string, first, last uint64) ([]Intent, error)
}

// Intent is a contiguous range [First, Last] of one bus partition that a
// consumer is inserting under Token.
type Intent struct {
	Consumer  string
	Partition string
	First     uint64
	Last      uint64
	Token     string
	State     IntentState
	Updated   time.Time
}

// Granularity of a usage series.
type Granularity string

const (
	Minute Granularity = "minute"
	Hour   Granularity = "hour"
	Day    Granularity = "day"
	Month  Granularity = "month"
)

// UsageQuery selects a usage series. Exactly one of KeyID or Project is
// usually set; both may be.
type UsageQuery struct {
	Project     string
	KeyID       string
	From, To    time.Time // [From, To)
	Granularity Granularity
	GroupBy     []string // any of "outcome", "route", "country"
}

// UsagePoint is one bucket of a usage series. Outcome, Route and Country are
// set only when grouped by them.
type UsagePoint struct {
	Start     time.Time
	Outcome   string
	Route     string
	Country   string
	Requests  uint64
	Allowed   uint64
	BytesIn   uint64
	BytesOut  uint64
	CostUnits uint64
	UniqueIPs uint64
	Countries uint64
}

// QuotaUsage is a key's usage in its current quota period.
type QuotaUsage struct {
	Requests  uint64 // all outcomes
	Allowed   uint64 // outcome valid: what quotas count
	CostUnits uint64 // of allowed requests
}

// BaselineQuery selects keys whose usual rate is wanted.
type BaselineQuery struct {
	Project  string // optional
	KeyID    string // optional
	From, To time.Time
}

// Baseline is a key's per-minute request rate over the window.
type Baseline struct {
	Project       string
	KeyID         string
	Requests      uint64
	ActiveMinutes uint64
	MeanPerMinute float64 // over the whole window
	P99PerMinute  float64 // over active minutes
	MaxPerMinute  uint64
}

// LogQuery selects raw events. Build it with ParseLogQuery from user input.
type LogQuery struct {
	Project   string
	KeyID     string
	ClientIP  string // an address or a CIDR
	StatusMin uint16 // inclusive; 0 = any
	StatusMax uint16 // inclusive
	Outcome   string
	Route     string
	Country   string
	From, To  time.Time // [From, To); zero = unbounded
	Limit     int       // default 100, max 10000
	Cursor    string    // from a previous LogPage.Next
}

// LogPage is one page of events, newest first. Next is empty on the last page.
type LogPage struct {
	Events []event.Event
	Next   string
}

// Decision is one detector decision with its evidence.
type Decision struct {
	ID          string
	Time        time.Time
	RuleID      string
	RuleVersion uint32
	Mode        string // enforce | dry_run
	Action      string // alert | throttle | block_ip | suspend | revoke
	Project     string
	KeyID       string
	ClientIP    string
	GroupKey    string
	Reason      string
	Evidence    string // JSON
}

// DecisionQuery selects decisions, newest first.
type DecisionQuery struct {
	Project  string
	KeyID    string
	RuleID   string
	From, To time.Time
	Limit    int
	// Cursor continues after the decision DecisionCursor was made from.
	Cursor string
}

// KeyRecord is the store's mirror of a key (no secret, no hash).
type KeyRecord struct {
	ID           string
	Project      string
	Name         string
	Owner        string
	Env          string
	Display      string // first characters of the secret, for display
	State        string // active | revoked | expired | throttled | suspended
	Created      time.Time
	Expires      time.Time // zero = never
	Revoked      time.Time // zero = not revoked
	RevokeReason string
	Scopes       []string
	AllowedCIDRs []string
	RateLimit    uint32 // requests per second, 0 = none
	MonthlyQuota uint64 // 0 = none
	Replaces     string
	Metadata     string // JSON object
	Version      uint64 // newer versions replace older ones
}

// MigrationState is one migration and whether it is applied.
type MigrationState struct {
	Version   int
	Name      string
	Applied   bool
	AppliedAt time.Time
}

// TableStats is the size of one table.
type TableStats struct {
	Table string
	Rows  uint64
	Bytes uint64
}
