package main

import (
	"context"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

func init() { registerBench(newBenchPipelineCmd) }

func newBenchPipelineCmd(g *globals) *cobra.Command {
	var (
		bf      busFlags
		cfg     bench.PipelineConfig
		dataDir string
	)
	c := &cobra.Command{
		Use:   "pipeline",
		Short: "Events from publish to rows committed in the store, through the aggregator: events/s, lost, duplicated",
		Example: `  keymeter bench pipeline --bus nats --store chdb --events 2000000
  keymeter bench pipeline --bus nats --events 2000000 --compare-store
  keymeter bench pipeline --bus kafka --kafka-brokers 127.0.0.1:19092 --events 2000000`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			dataDir, cleanup, err := bench.DataDir(dataDir, false, "pipeline")
			if err != nil {
				return err
			}
			defer cleanup()
			bf.Prefix = benchPrefix("benchp")
			b, err := bf.open(ctx, dataDir, g.Logger())
			if err != nil {
				return err
			}
			defer closeSoon(b)
			st, err := chdb.Open(chdb.Config{DataDir: filepath.Join(dataDir, "clickhouse"), Database: bf.Prefix})
			if err != nil {
				return err
			}
			defer st.Close(context.Background())
			if _, err := st.Migrate(ctx); err != nil {
				return err
			}
			cfg.Bus, cfg.Backend, cfg.Store, cfg.StoreName, cfg.Logger = b, bf.Backend, st, "chdb", g.Logger()
			_, err = bench.RunPipeline(ctx, cfg)
			return err
		},
	}
	bf.add(c.Flags())
	c.Flags().String("store", "chdb", "store backend (chdb)")
	c.Flags().IntVar(&cfg.Events, "events", 2_000_000, "events to publish")
	c.Flags().IntVar(&cfg.Batch, "batch", 1000, "events per bus message")
	c.Flags().IntVar(&cfg.Keys, "keys", 1000, "distinct keys")
	c.Flags().IntVar(&cfg.BlockSize, "max-block-events", 100_000, "aggregator block size")
	c.Flags().BoolVar(&cfg.CompareStore, "compare-store", false, "first insert the same events into the store alone (blocks of --max-block-events) and print both rates and their ratio")
	c.Flags().StringVar(&cfg.CPUProfile, "cpuprofile", "", "write a CPU profile of the pipeline phase to this file")
	c.Flags().StringVar(&cfg.MemProfile, "memprofile", "", "write a heap profile (taken when the last events are stored) to this file")
	c.Flags().StringVar(&dataDir, "data-dir", "", "where state lives (default: a temporary directory)")
	return c
}
