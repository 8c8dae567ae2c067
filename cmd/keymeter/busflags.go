package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/keys"
)

// busFlags select and configure the bus for any role.
type busFlags struct {
	Backend      string
	NATSURL      string
	KafkaBrokers string
	Prefix       string
	Partitions   int
	MaxPending   int
	Replicas     int
}

func (f *busFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.Backend, "bus", "nats", "bus backend: nats or kafka")
	fs.StringVar(&f.NATSURL, "nats-url", "", "NATS server URL; empty starts an embedded nats-server with its store under --data-dir")
	fs.StringVar(&f.KafkaBrokers, "kafka-brokers", "127.0.0.1:19092", "comma-separated Kafka bootstrap brokers (with --bus kafka)")
	fs.StringVar(&f.Prefix, "bus-prefix", "keymeter", "name prefix of subjects, streams and topics")
	fs.IntVar(&f.Partitions, "partitions", 8, "event partitions (created once; later runs must agree)")
	fs.IntVar(&f.MaxPending, "max-pending", 1024, "unacknowledged batches before publishing blocks")
	fs.IntVar(&f.Replicas, "bus-replicas", 1, "replicas of the streams (NATS) or replication factor of the topics (Kafka) keymeter creates; 3 in production")
}

// openedBus is a bus plus what must be stopped after it.
type openedBus struct {
	bus.Bus
	embedded *natsbus.Embedded
}

// Close closes the bus, then the embedded server if there is one.
func (o *openedBus) Close(ctx context.Context) error {
	err := o.Bus.Close(ctx)
	if o.embedded != nil {
		o.embedded.Shutdown()
	}
	return err
}

func (f *busFlags) open(ctx context.Context, dataDir string, log *slog.Logger) (*openedBus, error) {
	switch f.Backend {
	case "nats":
		var opts []natsbus.Option
		opts = append(opts, natsbus.WithLogger(log))
		o := &openedBus{}
		if f.NATSURL == "" {
			if dataDir == "" {
				return nil, fmt.Errorf("--data-dir is required for the embedded NATS server (or set --nats-url)")
			}
			if err := os.MkdirAll(dataDir, 0o755); err != nil {
				return nil, fmt.Errorf("data dir: %w", err)
			}
			e, err := natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: filepath.Join(dataDir, "nats")})
			if err != nil {
				return nil, err
			}
			o.embedded = e
			opts = append(opts, natsbus.WithEmbedded(e))
		}
		b, err := natsbus.New(ctx, natsbus.Config{URL: f.NATSURL, Prefix: f.Prefix, Partitions: f.Partitions, MaxPending: f.MaxPending, Replicas: f.Replicas}, opts...)
		if err != nil {
			if o.embedded != nil {
				o.embedded.Shutdown()
			}
			return nil, err
		}
		o.Bus = b
		return o, nil
	case "kafka":
		return openKafka(ctx, f, log)
	default:
		return nil, fmt.Errorf("--bus %q: accepted values are nats, kafka", f.Backend)
	}
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

// closeSoon closes the bus with a bounded grace, for defer.
func (o *openedBus) closeSoon() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = o.Close(ctx)
}

// keyService is a key table (full states kept) and the lifecycle service
// writing through it; the caller runs table.Run.
func keyService(b bus.KeyLog, log *slog.Logger) (*keys.Table, *keys.Service, error) {
	if ob, ok := b.(*openedBus); ok {
		b = ob.Bus // the adapter itself, so its compare-and-set is seen
	}
	table := keys.NewTable(keys.TableConfig{KeepState: true, Logger: log})
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: b, Table: table, Logger: log})
	return table, svc, err
}
