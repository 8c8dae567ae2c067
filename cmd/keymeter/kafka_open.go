package main

import (
	"context"
	"errors"
	"log/slog"
)

// openKafka is replaced once the kafkabus adapter lands.
func openKafka(ctx context.Context, f *busFlags, log *slog.Logger) (*openedBus, error) {
	return nil, errors.New("--bus kafka: the Kafka adapter is not wired into this build yet")
}
