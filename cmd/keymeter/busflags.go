package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/busopen"
	"github.com/keymeter/keymeter/internal/keys"
)

// busFlags select and configure the bus for any role.
type busFlags struct{ busopen.Config }

func (f *busFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.Backend, "bus", "nats", "bus backend: nats or kafka")
	fs.StringVar(&f.NATSURL, "nats-url", "", "NATS server URL; empty starts an embedded nats-server with its store under --data-dir")
	fs.StringVar(&f.NATSCreds, "nats-creds", "", "credentials for --nats-url: a NATS .creds file or an nkey seed file (keymeter dev's server: <data-dir>/nats.nk)")
	fs.StringVar(&f.KafkaBrokers, "kafka-brokers", "127.0.0.1:19092", "comma-separated Kafka bootstrap brokers (with --bus kafka)")
	fs.StringVar(&f.Prefix, "bus-prefix", "keymeter", "name prefix of subjects, streams and topics")
	fs.IntVar(&f.Partitions, "partitions", 8, "event partitions (created once; later runs must agree)")
	fs.IntVar(&f.MaxPending, "max-pending", 1024, "unacknowledged batches before publishing blocks")
	fs.IntVar(&f.Replicas, "bus-replicas", 1, "replicas of the streams (NATS) or replication factor of the topics (Kafka) keymeter creates; 3 in production")
}

// natsCredsFile is where the embedded NATS server started on dataDir keeps
// the nkey seed its clients authenticate with.
func natsCredsFile(dataDir string) string { return busopen.CredsFile(dataDir) }

// open connects to the bus (busopen.Open).
func (f *busFlags) open(ctx context.Context, dataDir string, log *slog.Logger) (bus.Bus, error) {
	return busopen.Open(ctx, f.Config, dataDir, log)
}

// closeSoon closes the bus with a bounded grace, for defer.
func closeSoon(b bus.Bus) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = b.Close(ctx)
}

// keyService is a key table (full states kept) and the lifecycle service
// writing through it; the caller runs table.Run.
func keyService(b bus.KeyLog, log *slog.Logger) (*keys.Table, *keys.Service, error) {
	table := keys.NewTable(keys.TableConfig{KeepState: true, Logger: log})
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: b, Table: table, Logger: log})
	return table, svc, err
}
