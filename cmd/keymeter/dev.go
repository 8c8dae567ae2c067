package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/devstack"
	"github.com/keymeter/keymeter/internal/leaks"
	"github.com/keymeter/keymeter/internal/store"
)

func init() { register(newDevCmd) }

type devOptions struct {
	bf            busFlags
	sf            storeFlags
	df            detectorFlags
	lf            leaks.Flags
	duration      time.Duration
	natsPort      int
	natsPortSet   bool
	proxyListen   string
	apiListen     string
	adminListen   string
	metricsListen string
	demoKeys      int
	rate          float64
	attacks       []string
	attackEvery   time.Duration
	attackAfter   time.Duration
	seed          uint64
	summaryEvery  time.Duration
	noTraffic     bool
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
often, an attack that the rules catch. It prints the URLs and a demo admin
token, then a summary line every few seconds. State lives under --data-dir and
survives restarts.`,
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
	f.StringVar(&o.sf.DataDir, "data-dir", "data", "where state lives (NATS store, ClickHouse data, spool, demo keys)")
	o.sf.Bind(f)
	o.df.BindDemo(f)
	o.lf.Bind(f)
	f.DurationVar(&o.duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	f.IntVar(&o.natsPort, "nats-port", devNATSPort, "port of the embedded NATS server on 127.0.0.1, for other processes (credentials in <data-dir>/nats.nk); 0: in-process only. When the port is not given here and is taken, dev serves in-process only and says so")
	f.StringVar(&o.proxyListen, "proxy-listen", "127.0.0.1:8080", "the verifier (reverse proxy in front of the demo API)")
	f.StringVar(&o.apiListen, "api-listen", "127.0.0.1:8081", "the REST API")
	f.StringVar(&o.adminListen, "admin-listen", "127.0.0.1:9464", "metrics of the verifier")
	f.StringVar(&o.metricsListen, "metrics-listen", "127.0.0.1:9465", "metrics of the aggregator, detector and API (empty to disable)")
	f.IntVar(&o.demoKeys, "demo-keys", 20, "demo keys the load generator uses")
	f.Float64Var(&o.rate, "rate", 200, "normal demo requests per second")
	f.StringSliceVar(&o.attacks, "attacks", []string{"geo-shift", "credential-stuffing", "anon-burst", "leaked-key", "quota-spike"}, "attack scenarios, taking turns")
	f.DurationVar(&o.attackEvery, "attack-every", 15*time.Second, "start an attack this often")
	f.DurationVar(&o.attackAfter, "attack-after", 8*time.Second, "first attack after this long")
	f.Uint64Var(&o.seed, "seed", uint64(time.Now().Unix()), "traffic seed")
	f.DurationVar(&o.summaryEvery, "summary-every", 5*time.Second, "how often the summary line is printed")
	f.BoolVar(&o.noTraffic, "no-traffic", false, "start the pipeline without demo traffic")
	return c
}

func runDev(parent context.Context, g *globals, o *devOptions) error {
	ctx, cancel := withDuration(parent, o.duration)
	defer cancel()
	log := g.Logger()
	leakCfg, err := o.lf.Config()
	if err != nil {
		return err
	}
	st, b, note, err := openDev(ctx, o, log)
	if err != nil {
		return err
	}
	defer func() { // last: the store, then the bus
		st.Close(context.Background())
		closeSoon(b)
	}()
	return devstack.Run(ctx, devstack.Config{DataDir: o.sf.DataDir, Store: st, Bus: b, BusNote: note,
		Detector: func(ka detector.KeyActions, reg prometheus.Registerer) detector.RunConfig {
			return o.df.config(b, st, ka, reg, log)
		},
		Leaks: leakCfg, ProxyListen: o.proxyListen, APIListen: o.apiListen, AdminListen: o.adminListen, MetricsListen: o.metricsListen,
		DemoKeys: o.demoKeys, Rate: o.rate, Attacks: o.attacks, AttackEvery: o.attackEvery, AttackAfter: o.attackAfter, Seed: o.seed,
		SummaryEvery: o.summaryEvery, NoTraffic: o.noTraffic, Logger: log})
}

// openDev opens the store (first: if the embedded engine is missing, say
// so before anything starts), migrates it, and opens the bus.
func openDev(ctx context.Context, o *devOptions, log *slog.Logger) (*store.DB, bus.Bus, string, error) {
	if err := os.MkdirAll(o.sf.DataDir, 0o750); err != nil {
		return nil, nil, "", fmt.Errorf("--data-dir: %w", err)
	}
	st, err := o.sf.Open(ctx)
	if err != nil {
		return nil, nil, "", err
	}
	if _, err := st.Migrate(ctx); err != nil {
		st.Close(context.Background())
		return nil, nil, "", fmt.Errorf("migrate: %w", err)
	}
	b, note, err := openDevBus(ctx, o, log)
	if err != nil {
		st.Close(context.Background())
		return nil, nil, "", err
	}
	return st, b, note, nil
}

// devNATSPort is the default port of dev's embedded NATS server.
const devNATSPort = devstack.NATSPort

// openDevBus opens the bus of keymeter dev (devstack.OpenBus) and says in
// one line how other processes reach it.
func openDevBus(ctx context.Context, o *devOptions, log *slog.Logger) (bus.Bus, string, error) {
	return devstack.OpenBus(ctx, o.bf.Config, o.sf.DataDir, o.natsPort, o.natsPortSet, log)
}
