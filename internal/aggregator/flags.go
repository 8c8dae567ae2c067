package aggregator

import (
	"time"

	"github.com/spf13/pflag"
)

// Bind defines keymeter aggregator's flags of the consumer and of quota
// tracking on fs; Run's other settings are the command's.
func (rc *RunConfig) Bind(fs *pflag.FlagSet) {
	cfg, q := &rc.Aggregator, &rc.Quota
	fs.StringVar(&cfg.Group, "group", "aggregator", "consumer group; aggregators of one group share partitions")
	fs.IntSliceVar(&cfg.Partitions, "own-partitions", nil, "partitions this aggregator reads (NATS; one owner per partition and group); empty: all. Kafka assigns partitions through the group")
	fs.DurationVar(&cfg.LeaseTTL, "nats-leases", 0, "NATS: share the partitions among the group's live aggregators by leases, a member silent this long (e.g. 10s) losing its partitions to the others; 0: fixed --own-partitions")
	fs.IntVar(&cfg.MaxBlockEvents, "max-block-events", 100_000, "insert once this many events are buffered")
	fs.IntVar(&cfg.MaxBurstBlockEvents, "max-burst-block-events", 0, "largest block while the store is behind: blocks grow towards it when one fills before the last insert finished (0: 2×max-block-events; equal to it: no growth)")
	fs.DurationVar(&cfg.FlushInterval, "flush-interval", time.Second, "longest an event waits before it is inserted")
	fs.DurationVar(&cfg.AckWait, "ack-wait", 30*time.Second, "redelivery delay of unacknowledged batches (NATS)")
	fs.DurationVar(&cfg.StopWhenIdle, "stop-when-idle", 0, "exit once nothing arrived for this long and all is stored (drain mode); 0: never")
	fs.StringVar(&q.Period, "quota-period", "month", "quota period: month or day (UTC)")
	fs.Float64Var(&q.WarnRatio, "quota-warn", 0.8, "share of the quota at which a key turns to warning")
	fs.StringVar(&q.WebhookURL, "quota-webhook-url", "", "POST quota transitions here (signed, retried)")
	fs.StringVar(&q.WebhookSecret, "quota-webhook-secret", "", "HMAC-SHA256 secret for X-Keymeter-Signature (prefer KEYMETER_QUOTA_WEBHOOK_SECRET: arguments show in ps)")
	rc.MemoryLimit = AutoMemoryLimit()
	fs.Var(&rc.MemoryLimit, "memory-limit", "the Go runtime's soft memory limit (as GOMEMLIMIT, which wins when set): auto (384MiB + 1KiB per event of the largest block), off, or a size such as 768MiB; chDB's engine memory comes on top")
	fs.StringVar(&rc.AdminListen, "admin-listen", "127.0.0.1:9465", "address of /metrics, /healthz, /readyz (empty to disable)")
	fs.BoolVar(&rc.Migrate, "migrate", true, "apply pending store migrations at start")
}
