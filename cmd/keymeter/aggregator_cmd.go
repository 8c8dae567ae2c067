package main

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/aggregator"
)

func init() { register(newAggregatorCmd) }

func newAggregatorCmd(g *globals) *cobra.Command {
	var (
		bf          busFlags
		sf          storeFlags
		cfg         aggregator.Config
		qcfg        aggregator.QuotaConfig
		duration    time.Duration
		adminListen string
		migrate     bool
	)
	c := &cobra.Command{
		Use:   "aggregator",
		Short: "Consume usage events from the bus into the store exactly once; track quotas",
		Long: `The aggregator reads event batches from the bus and inserts them into
ClickHouse exactly once: each contiguous range of a partition is recorded as an
intent, inserted as one block with a deterministic deduplication token, then
acknowledged; after a crash the recorded ranges are replayed with the same
tokens. It also tracks each key's usage in its quota period and publishes
ok → warning → exceeded to the key-state log, where verifiers enforce it.

One process owns a partition of a group at a time. On NATS, split the
partitions between aggregators with --own-partitions (a second process binding
the same partition takes it over and the first stops). On Kafka the consumer
group assigns partitions to any number of members: inserts are fenced by the
group's generation, so partitions moving between live members stay exactly
once (a member that lost a partition can no longer insert it; the new owner
replays its recorded intents under their tokens).`,
		Example: `  keymeter aggregator --data-dir data
  keymeter aggregator --bus kafka --kafka-brokers k1:9092 --store clickhouse --clickhouse-dsn clickhouse://ch:9000/keymeter`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := withDuration(cmd.Context(), duration)
			defer cancel()
			log := g.Logger()
			rc := aggregator.RunConfig{Aggregator: cfg, Quota: qcfg, Migrate: migrate, AdminListen: adminListen, Logger: log}
			if err := errors.Join(rc.Aggregator.Validate(), rc.Quota.Validate()); err != nil {
				return err // before anything opens
			}
			if sf.DataDir == "" {
				sf.DataDir = "data"
			}
			st, err := sf.Open(ctx)
			if err != nil {
				return err
			}
			defer st.Close(context.Background()) // closed after the bus: deferred first
			b, err := bf.open(ctx, sf.DataDir, log)
			if err != nil {
				return err
			}
			defer closeSoon(b)
			rc.Bus, rc.Store = b, st
			return aggregator.Run(ctx, rc)
		},
	}
	f := c.Flags()
	bf.add(f)
	f.StringVar(&sf.DataDir, "data-dir", "data", "where state lives (embedded NATS and ClickHouse)")
	sf.Bind(f)
	f.StringVar(&cfg.Group, "group", "aggregator", "consumer group; aggregators of one group share partitions")
	f.IntSliceVar(&cfg.Partitions, "own-partitions", nil, "partitions this aggregator reads (NATS; one owner per partition and group); empty: all. Kafka assigns partitions through the group")
	f.IntVar(&cfg.MaxBlockEvents, "max-block-events", 100_000, "insert once this many events are buffered")
	f.DurationVar(&cfg.FlushInterval, "flush-interval", time.Second, "longest an event waits before it is inserted")
	f.DurationVar(&cfg.AckWait, "ack-wait", 30*time.Second, "redelivery delay of unacknowledged batches (NATS)")
	f.DurationVar(&cfg.StopWhenIdle, "stop-when-idle", 0, "exit once nothing arrived for this long and all is stored (drain mode); 0: never")
	f.StringVar(&qcfg.Period, "quota-period", "month", "quota period: month or day (UTC)")
	f.Float64Var(&qcfg.WarnRatio, "quota-warn", 0.8, "share of the quota at which a key turns to warning")
	f.StringVar(&qcfg.WebhookURL, "quota-webhook-url", "", "POST quota transitions here (signed, retried)")
	f.StringVar(&qcfg.WebhookSecret, "quota-webhook-secret", "", "HMAC-SHA256 secret for X-Keymeter-Signature (prefer KEYMETER_QUOTA_WEBHOOK_SECRET: arguments show in ps)")
	f.DurationVar(&duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	f.StringVar(&adminListen, "admin-listen", "127.0.0.1:9465", "address of /metrics, /healthz, /readyz (empty to disable)")
	f.BoolVar(&migrate, "migrate", true, "apply pending store migrations at start")
	return c
}
