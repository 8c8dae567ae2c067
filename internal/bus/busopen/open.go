// Package busopen opens the bus that a command's flags select: NATS (with
// no URL, an embedded nats-server that the bus owns and stops on Close) or
// Kafka. The commands of cmd/keymeter define the flags; this is what they
// do with them.
package busopen

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
)

// Config selects and configures the bus.
type Config struct {
	Backend      string // nats or kafka
	NATSURL      string // empty: an embedded server under the data dir
	NATSCreds    string // .creds or nkey seed file for NATSURL
	KafkaBrokers string // comma-separated bootstrap brokers
	Prefix       string // name prefix of subjects, streams and topics
	Partitions   int
	MaxPending   int
	Replicas     int
	// NATSPort makes the embedded server (no NATSURL) listen on
	// 127.0.0.1:NATSPort too; 0 serves only this process (keymeter dev's
	// --nats-port sets it).
	NATSPort int
}

// CredsFile is where the embedded NATS server started on dataDir keeps the
// nkey seed its clients authenticate with (mode 0600).
func CredsFile(dataDir string) string { return filepath.Join(dataDir, "nats.nk") }

// Open connects to the bus. Without NATSURL, the NATS bus starts an
// embedded server on dataDir that it owns: closing the bus stops it.
func Open(ctx context.Context, c Config, dataDir string, log *slog.Logger) (bus.Bus, error) {
	switch c.Backend {
	case "nats":
		cfg := natsbus.Config{URL: c.NATSURL, CredsFile: c.NATSCreds, Prefix: c.Prefix, Partitions: c.Partitions, MaxPending: c.MaxPending, Replicas: c.Replicas}
		opts := []natsbus.Option{natsbus.WithLogger(log)}
		if c.NATSURL == "" {
			if dataDir == "" {
				return nil, fmt.Errorf("--data-dir is required for the embedded NATS server (or set --nats-url)")
			}
			opts = append(opts, natsbus.WithEmbeddedServer(natsbus.EmbeddedConfig{
				DataDir: filepath.Join(dataDir, "nats"), CredsFile: CredsFile(dataDir),
				Listen: c.NATSPort != 0, Port: c.NATSPort,
			}))
		}
		return natsbus.New(ctx, cfg, opts...)
	case "kafka":
		return kafkabus.New(ctx, kafkabus.Config{
			Brokers:           splitList(c.KafkaBrokers),
			TopicPrefix:       c.Prefix + ".",
			Partitions:        c.Partitions,
			MaxPending:        c.MaxPending,
			ReplicationFactor: c.Replicas,
		}, kafkabus.WithLogger(log))
	default:
		return nil, fmt.Errorf("--bus %q: accepted values are nats, kafka", c.Backend)
	}
}

// Another opens one more connection to the bus first is on (each verifier
// of a benchmark has its own connection, as separate processes would):
// to first's embedded server if it has one, else as c says.
func Another(ctx context.Context, c Config, first bus.Bus, log *slog.Logger) (bus.Bus, error) {
	if nb, ok := first.(*natsbus.Bus); ok && nb.Embedded() != nil {
		return natsbus.New(ctx, natsbus.Config{Prefix: c.Prefix, Partitions: c.Partitions, MaxPending: c.MaxPending},
			natsbus.WithLogger(log), natsbus.WithEmbedded(nb.Embedded()))
	}
	return Open(ctx, c, "", log)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
