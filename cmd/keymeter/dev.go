package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
)

func init() { register(newDevCmd) }

func newDevCmd(g *globals) *cobra.Command {
	var (
		bf       busFlags
		dataDir  string
		duration time.Duration
	)
	c := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole pipeline in one process on embedded defaults, with demo traffic",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			fmt.Fprintln(os.Stderr, "keymeter dev: embedded NATS JetStream; demonstrating the bus with `bench bus`")
			bf.Prefix = "dev"
			return runBenchBus(ctx, g, &bf, dataDir, 1_000_000, 1000)
		},
	}
	bf.add(c.Flags())
	c.Flags().StringVar(&dataDir, "data-dir", "data", "where state lives (NATS store, chDB data, spool)")
	c.Flags().DurationVar(&duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	return c
}
