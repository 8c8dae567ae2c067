package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/bench"
)

func init() { registerBench(newBenchChaosCmd) }

func newBenchChaosCmd(g *globals) *cobra.Command {
	var cfg bench.ChaosConfig
	var keep bool
	c := &cobra.Command{
		Use:   "chaos",
		Short: "A 3-node NATS or Kafka cluster on the shipped configs; kills aggregators, a bus node and a verifier under traffic: lost, duplicated, kills, p99",
		Example: `  keymeter bench chaos --bus nats --events 1000000 --aggregators 3 --kills 5
  keymeter bench chaos --bus kafka --events 1000000 --aggregators 3 --kills 5`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, cleanup, err := bench.DataDir(cfg.Dir, keep, "chaos")
			if err != nil {
				return err
			}
			defer cleanup()
			cfg.Dir, cfg.Logger = dir, g.Logger()
			res, err := bench.RunChaos(cmd.Context(), cfg)
			if err == nil && !res.OK() {
				err = errors.New("bench chaos: events lost or doubled")
			}
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.Bus, "bus", "nats", "nats (three Debian nats-server) or kafka (three KRaft brokers from kafka.sh's jars)")
	f.IntVar(&cfg.Events, "events", 1_000_000, "requests sent through the verifiers (one event each)")
	f.IntVar(&cfg.Aggregators, "aggregators", 3, "aggregators (on NATS each owns partitions of its own)")
	f.IntVar(&cfg.Verifiers, "verifiers", 2, "verifiers")
	f.IntVar(&cfg.Kills, "kills", 5, "kills during the run, in turn: aggregator, bus node (with a revocation while it is down), verifier")
	f.IntVar(&cfg.Clients, "clients", 8, "concurrent HTTP clients")
	f.Float64Var(&cfg.Rate, "rate", 0, "requests per second (0: as fast as answered)")
	f.BoolVar(&cfg.DurableLog, "durable-log", false, "run the verifiers with --durable-log")
	f.DurationVar(&cfg.NATSLeases, "nats-leases", 0, "NATS: run the aggregators with --nats-leases of this TTL (e.g. 2s) instead of each on partitions of its own")
	f.StringVar(&cfg.Dir, "data-dir", "", "where the cluster, verifiers and store live (default: a temporary directory)")
	f.BoolVar(&keep, "keep", false, "keep the temporary data directory")
	return c
}
