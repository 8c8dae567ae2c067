package busopen

import "github.com/spf13/pflag"

// Bind defines the bus flags of every role (--bus, --nats-url, ...) on fs,
// with their defaults, writing into c.
func (c *Config) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&c.Backend, "bus", "nats", "bus backend: nats or kafka")
	fs.StringVar(&c.NATSURL, "nats-url", "", "NATS server URL; empty starts an embedded nats-server with its store under --data-dir")
	fs.StringVar(&c.NATSCreds, "nats-creds", "", "credentials for --nats-url: a NATS .creds file or an nkey seed file (keymeter dev's server: <data-dir>/nats.nk)")
	fs.StringVar(&c.KafkaBrokers, "kafka-brokers", "127.0.0.1:19092", "comma-separated Kafka bootstrap brokers (with --bus kafka)")
	fs.StringVar(&c.Prefix, "bus-prefix", "keymeter", "name prefix of subjects, streams and topics")
	fs.IntVar(&c.Partitions, "partitions", 8, "event partitions (created once; later runs must agree)")
	fs.IntVar(&c.MaxPending, "max-pending", 1024, "unacknowledged batches before publishing blocks")
	fs.IntVar(&c.Replicas, "bus-replicas", 1, "replicas of the streams (NATS) or replication factor of the topics (Kafka) keymeter creates; 3 in production")
}
