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
		bf       busFlags
		sf       storeFlags
		rc       aggregator.RunConfig
		duration time.Duration
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

One process owns a partition of a group at a time. On NATS, run any number
of aggregators with --nats-leases 10s (partition leases hand a dead member's
partitions to the live ones after 10 s, fenced like a Kafka group), or split
the partitions with --own-partitions (a second process binding the same
partition takes it over and the first stops). On Kafka the consumer
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
			rc.Logger = log
			if err := errors.Join(rc.Aggregator.Validate(), rc.Quota.Validate()); err != nil {
				return err // before anything opens
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
	sf.BindWithDataDir(f, "where state lives (embedded NATS and ClickHouse)")
	rc.Bind(f)
	f.DurationVar(&duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	return c
}
