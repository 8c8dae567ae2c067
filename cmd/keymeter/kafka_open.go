package main

import (
	"context"
	"log/slog"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
)

func openKafka(ctx context.Context, f *busFlags, log *slog.Logger) (bus.Bus, error) {
	return kafkabus.New(ctx, kafkabus.Config{
		Brokers:           splitList(f.KafkaBrokers),
		TopicPrefix:       f.Prefix + ".",
		Partitions:        f.Partitions,
		MaxPending:        f.MaxPending,
		ReplicationFactor: f.Replicas,
	}, kafkabus.WithLogger(log))
}
