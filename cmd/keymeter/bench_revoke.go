package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/keys"
)

func init() { registerBench(newBenchRevokeE2ECmd) }

func newBenchRevokeE2ECmd(g *globals) *cobra.Command {
	var (
		bf  busFlags
		df  detectorFlags
		cfg bench.RevokeConfig
	)
	c := &cobra.Command{
		Use:   "revoke-e2e",
		Short: "From the event that crosses a revoke threshold entering the verifier to the verifier refusing the key: p50, p99",
		Long: `Each trial creates a key and sends it through a verifier from four countries,
then from a fifth: that request crosses the revoke threshold of the bench's
own rule (five countries in 30 minutes, no corroboration: the starter pack
judges keys only once their profile is mature, which a new key is not). The
clock starts when it is sent and stops at the first request with the key
that the verifier refuses. Verifier, detector and bus run in this process;
the circuit breaker is off for the run.`,
		Example: `  keymeter bench revoke-e2e --bus nats --trials 200
  keymeter bench revoke-e2e --bus kafka --kafka-brokers 127.0.0.1:19092`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := g.Logger()
			dir, cleanup, err := bench.DataDir("", false, "revoke")
			if err != nil {
				return err
			}
			defer cleanup()
			bf.Prefix = benchPrefix("benchr")
			b, err := bf.open(ctx, dir, log)
			if err != nil {
				return err
			}
			defer closeSoon(b)
			df.MaxRevokes, df.MaxGlobal = -1, -1
			// The pack judges only keys with history; the bench's keys are
			// seconds old, so it times revocation with a rule of its own.
			rulesDir, err := bench.WriteRevokeRule(dir)
			if err != nil {
				return err
			}
			df.Rules = []string{rulesDir}
			cfg.Bus, cfg.Backend, cfg.DataDir, cfg.Logger = b, bf.Backend, dir, log
			cfg.Detector = func(ctx context.Context, eg *errgroup.Group, svc *keys.Service) error {
				role, err := detector.Assemble(ctx, df.config(b, nil, svc, nil, log))
				if err != nil {
					return err
				}
				eg.Go(func() error { return role.Run(ctx) })
				return nil
			}
			return bench.RunRevokeE2E(ctx, cfg)
		},
	}
	bf.add(c.Flags())
	df.add(c)
	c.Flags().IntVar(&cfg.Trials, "trials", 100, "revocations to time")
	c.Flags().DurationVar(&cfg.FlushInterval, "flush-interval", 50*time.Millisecond, "verifier event batch flush interval")
	return c
}
