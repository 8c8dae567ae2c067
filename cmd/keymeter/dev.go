package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/devstack"
	"github.com/keymeter/keymeter/internal/leaks"
)

func init() { register(newDevCmd) }

type devOptions struct {
	bf          busFlags
	sf          storeFlags
	df          detectorFlags
	lf          leaks.Flags
	cfg         devstack.Config
	duration    time.Duration
	natsPort    int
	natsPortSet bool
}

func newDevCmd(g *globals) *cobra.Command {
	o := &devOptions{}
	c := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole pipeline in one process on embedded defaults, with demo traffic and attacks",
		Long: `keymeter dev starts, in one process: an embedded NATS JetStream server, the
embedded ClickHouse engine (chDB), a demo upstream API, the verifier in front of
it, the aggregator, the detector with the starter rules, the REST API, and a
load generator sending normal traffic for a set of demo keys plus, every so
often, an attack that the rules catch. It prints the URLs and where the demo
admin token is, then a summary line every few seconds. State lives under
--data-dir and survives restarts.`,
		Example: `  keymeter dev                      # what make run runs
  keymeter dev --duration 75s
  keymeter dev --bus kafka --kafka-brokers 127.0.0.1:19092
  keymeter dev --store clickhouse --clickhouse-dsn clickhouse://127.0.0.1:9000/keymeter`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.natsPortSet = cmd.Flags().Changed("nats-port")
			return runDev(cmd.Context(), g, o)
		},
	}
	f := c.Flags()
	o.bf.add(f)
	o.sf.BindWithDataDir(f, "where state lives (NATS store, ClickHouse data, spool, demo keys)")
	o.df.BindDemo(f)
	o.lf.Bind(f)
	o.cfg.Bind(f)
	f.DurationVar(&o.duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	f.IntVar(&o.natsPort, "nats-port", devNATSPort, "port of the embedded NATS server on 127.0.0.1, for other processes (credentials in <data-dir>/nats.nk); 0: in-process only. When the port is not given here and is taken, dev serves in-process only and says so")
	return c
}

func runDev(parent context.Context, g *globals, o *devOptions) error {
	ctx, cancel := withDuration(parent, o.duration)
	defer cancel()
	log := g.Logger()
	cfg := o.cfg
	var err error
	if cfg.Leaks, err = o.lf.Config(); err != nil {
		return err
	}
	st, b, note, err := devstack.Open(ctx, o.sf.Config, o.bf.Config, o.natsPort, o.natsPortSet, log)
	if err != nil {
		return err
	}
	defer func() { // last: the store, then the bus
		st.Close(context.Background())
		closeSoon(b)
	}()
	cfg.DataDir, cfg.Store, cfg.Bus, cfg.BusNote, cfg.Logger = o.sf.DataDir, st, b, note, log
	cfg.Detector = func(ka detector.KeyActions, reg prometheus.Registerer) detector.RunConfig {
		return o.df.config(b, st, ka, reg, log)
	}
	return devstack.Run(ctx, cfg)
}

// devNATSPort is the default port of dev's embedded NATS server.
const devNATSPort = devstack.NATSPort

// openDevBus opens the bus of keymeter dev (devstack.OpenBus) and says in
// one line how other processes reach it.
func openDevBus(ctx context.Context, o *devOptions, log *slog.Logger) (bus.Bus, string, error) {
	return devstack.OpenBus(ctx, o.bf.Config, o.sf.DataDir, o.natsPort, o.natsPortSet, log)
}
