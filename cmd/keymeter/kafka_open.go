package main

import (
	"context"
	"log/slog"

	"github.com/keymeter/keymeter/internal/bus/kafkabus"
)

func openKafka(ctx context.Context, f *busFlags, log *slog.Logger) (*openedBus, error) {
	b, err := kafkabus.New(ctx, kafkabus.Config{
		Brokers:           splitList(f.KafkaBrokers),
		TopicPrefix:       f.Prefix + ".",
		Partitions:        f.Partitions,
		MaxPending:        f.MaxPending,
		ReplicationFactor: f.Replicas,
	}, kafkabus.WithLogger(log))
	if err != nil {
		return nil, err
	}
	return &openedBus{Bus: b}, nil
}
