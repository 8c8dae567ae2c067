package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/bench"
)

func init() { registerBench(newBenchBusCmd) }

func newBenchBusCmd(g *globals) *cobra.Command {
	var (
		bf      busFlags
		cfg     bench.BusConfig
		dataDir string
		keep    bool
	)
	c := &cobra.Command{
		Use:   "bus",
		Short: "Publish N events in batches and consume them all back: events/s, publish-to-consume p99, lost, duplicated",
		Example: `  keymeter bench bus --bus nats --events 2000000 --batch 1000
  keymeter bench bus --bus kafka --kafka-brokers 127.0.0.1:19092 --events 2000000`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Events <= 0 || cfg.Batch <= 0 {
				return fmt.Errorf("--events and --batch must be positive (got %d, %d)", cfg.Events, cfg.Batch)
			}
			dataDir, cleanup, err := bench.DataDir(dataDir, keep, "bus")
			if err != nil {
				return err
			}
			defer cleanup()
			bf.Prefix = benchPrefix("bench")
			b, err := bf.open(cmd.Context(), dataDir, g.Logger())
			if err != nil {
				return err
			}
			defer closeSoon(b)
			cfg.Bus, cfg.Backend = b, bf.Backend
			_, err = bench.RunBus(cmd.Context(), cfg)
			return err
		},
	}
	bf.add(c.Flags())
	c.Flags().IntVar(&cfg.Events, "events", 2_000_000, "events to publish")
	c.Flags().IntVar(&cfg.Batch, "batch", 1000, "events per bus message")
	c.Flags().StringVar(&dataDir, "data-dir", "", "where the embedded server keeps its store (default: a temporary directory)")
	c.Flags().BoolVar(&keep, "keep", false, "keep the temporary data directory")
	return c
}
