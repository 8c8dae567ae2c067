package main

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/busopen"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

// benchFactories are the `keymeter bench` subcommands; files add theirs
// with registerBench from an init function. The harnesses and their flags
// are in internal/bench; a subcommand is its help and what it opens.
var benchFactories []func(*globals) *cobra.Command

func registerBench(f func(*globals) *cobra.Command) { benchFactories = append(benchFactories, f) }

func init() {
	registerBench(newBenchBusCmd)
	registerBench(newBenchPipelineCmd)
	registerBench(newBenchStoreCmd)
	registerBench(newBenchQueryCmd)
	registerBench(newBenchRevocationCmd)
	registerBench(newBenchRevokeE2ECmd)
	registerBench(newBenchProxyCmd)
	registerBench(newBenchDetectCmd)
	register(func(g *globals) *cobra.Command {
		c := &cobra.Command{
			Use:   "bench",
			Short: "System benchmarks: each prints progress on stderr and one summary line of name=value figures on stdout",
		}
		for _, f := range benchFactories {
			c.AddCommand(f(g))
		}
		return c
	})
}

// busBench is a benchmark on a bus (bench.Env): run gets the bus opened
// with a fresh prefix on its data directory.
func busBench(g *globals, c *cobra.Command, bind func(*pflag.FlagSet), run func(ctx context.Context, env *bench.Env, b bus.Bus, dir string) error) *cobra.Command {
	env := &bench.Env{}
	c.Args = cobra.NoArgs
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		b, dir, closeAll, err := env.Open(cmd.Context(), c.Name(), g.Logger())
		if err != nil {
			return err
		}
		defer closeAll()
		return run(cmd.Context(), env, b, dir)
	}
	env.Bind(c.Flags())
	bind(c.Flags())
	return c
}

func newBenchBusCmd(g *globals) *cobra.Command {
	var cfg bench.BusConfig
	return busBench(g, &cobra.Command{
		Use:   "bus",
		Short: "Publish N events in batches and consume them all back: events/s, publish-to-consume p99, lost, duplicated",
		Example: `  keymeter bench bus --bus nats --events 2000000 --batch 1000
  keymeter bench bus --bus kafka --kafka-brokers 127.0.0.1:19092 --events 2000000`,
	}, cfg.Bind, func(ctx context.Context, env *bench.Env, b bus.Bus, _ string) error {
		cfg.Bus, cfg.Backend = b, env.Bus.Backend
		_, err := bench.RunBus(ctx, cfg)
		return err
	})
}

func newBenchPipelineCmd(g *globals) *cobra.Command {
	var cfg bench.PipelineConfig
	return busBench(g, &cobra.Command{
		Use:   "pipeline",
		Short: "Events from publish to rows committed in the store, through the aggregator: events/s, lost, duplicated",
		Example: `  keymeter bench pipeline --bus nats --store chdb --events 2000000
  keymeter bench pipeline --bus nats --events 2000000 --compare-store
  keymeter bench pipeline --bus kafka --kafka-brokers 127.0.0.1:19092 --events 2000000`,
	}, cfg.Bind, func(ctx context.Context, env *bench.Env, b bus.Bus, dir string) error {
		st, err := chdb.Open(chdb.Config{DataDir: filepath.Join(dir, "clickhouse"), Database: env.Bus.Prefix})
		if err != nil {
			return err
		}
		defer st.Close(context.Background())
		if _, err := st.Migrate(ctx); err != nil {
			return err
		}
		cfg.Bus, cfg.Backend, cfg.Store, cfg.StoreName, cfg.Logger = b, env.Bus.Backend, st, "chdb", g.Logger()
		_, err = bench.RunPipeline(ctx, cfg)
		return err
	})
}

func newBenchRevocationCmd(g *globals) *cobra.Command {
	var cfg bench.RevocationConfig
	return busBench(g, &cobra.Command{
		Use:   "revocation",
		Short: "Time from a revocation to the last verifier refusing the key: p50, p99",
		Long: `Starts --verifiers key tables (each on its own bus connection, as separate
verifier processes would be), loads --keys keys, then revokes --revocations
random keys one after the other through keys.Service and measures, for each,
the time until every verifier refuses the key. p50_ms/p99_ms are measured
from the start of the revoke call; *_from_return_ms from its return (the
service returns once its own watch has seen the write, so those are near 0).`,
		Example: `  keymeter bench revocation --bus nats --verifiers 3 --keys 100000
  keymeter bench revocation --bus kafka --kafka-brokers 127.0.0.1:19092 --verifiers 3 --keys 100000`,
	}, cfg.Bind, func(ctx context.Context, env *bench.Env, admin bus.Bus, _ string) error {
		log := g.Logger()
		cfg.Bus, cfg.Backend, cfg.Logger = admin, env.Bus.Backend, log
		cfg.Connect = func(ctx context.Context) (bus.Bus, error) { return busopen.Another(ctx, env.Bus, admin, log) }
		return bench.RunRevocation(ctx, cfg)
	})
}

func newBenchProxyCmd(g *globals) *cobra.Command {
	var cfg bench.ProxyConfig
	return busBench(g, &cobra.Command{
		Use:   "proxy",
		Short: "Proxy overhead: the same upstream through a bare httputil.ReverseProxy and through the verifier; forward-auth requests/s",
		Long: `Starts a local upstream, a bare httputil.ReverseProxy in front of it, and the
keymeter verifier in proxy mode (with its forward-auth endpoint), on the bus
given. Drives each with --connections concurrent keep-alive clients for
--duration, --rounds times, alternating, with valid keys round-robin; then the
forward-auth endpoint alone. requests_per_s is the verifier's, ratio its share
of the bare proxy's. Load generator and servers share this machine's cores.`,
		Example: `  keymeter bench proxy --connections 64 --duration 5s
  # the same with wrk (Debian's wrk), against a running verifier:
  #   wrk -t2 -c64 -d10s -H 'Authorization: Bearer km_live_…' http://127.0.0.1:8080/`,
	}, cfg.Bind, func(ctx context.Context, env *bench.Env, b bus.Bus, dir string) error {
		cfg.Bus, cfg.Backend, cfg.DataDir, cfg.Logger = b, env.Bus.Backend, dir, g.Logger()
		return bench.RunProxy(ctx, cfg)
	})
}

func newBenchRevokeE2ECmd(g *globals) *cobra.Command {
	var (
		df  detector.Settings
		cfg bench.RevokeConfig
	)
	return busBench(g, &cobra.Command{
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
	}, func(fs *pflag.FlagSet) { df.Bind(fs); cfg.Bind(fs) }, func(ctx context.Context, env *bench.Env, b bus.Bus, dir string) error {
		log := g.Logger()
		df.MaxRevokes, df.MaxGlobal = -1, -1
		// The pack judges only keys with history; the bench's keys are
		// seconds old, so it times revocation with a rule of its own.
		rulesDir, err := bench.WriteRevokeRule(dir)
		if err != nil {
			return err
		}
		df.Rules = []string{rulesDir}
		cfg.Bus, cfg.Backend, cfg.DataDir, cfg.Logger = b, env.Bus.Backend, dir, log
		cfg.Detector = func(ctx context.Context, eg *errgroup.Group, svc *keys.Service) error {
			role, err := detector.Assemble(ctx, df.Config(b, nil, svc, nil, log))
			if err != nil {
				return err
			}
			eg.Go(func() error { return role.Run(ctx) })
			return nil
		}
		return bench.RunRevokeE2E(ctx, cfg)
	})
}

func newBenchStoreCmd(g *globals) *cobra.Command {
	var (
		sf  storeFlags
		run bench.StoreRun
		env bench.Env
	)
	c := &cobra.Command{
		Use:   "store",
		Short: "Insert N events through the store (raw rows + rollups): events/s and peak RSS",
		Example: `  keymeter bench store --backend chdb --events 2000000
  keymeter bench store --backend chdb --events 2000000 --rollups both`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := run.Modes(); err != nil {
				return err
			}
			if sf.Backend == "chdb" { // a temporary data dir unless --data-dir is given
				dir, cleanup, err := bench.DataDir(env.DataDir, env.Keep, "store")
				if err != nil {
					return err
				}
				defer cleanup()
				sf.DataDir = dir
			}
			run.Backend, run.Database = sf.Backend, sf.Database
			run.Open = func(ctx context.Context, db string) (*store.DB, error) {
				sf.Database = db
				return sf.Open(ctx)
			}
			return run.Run(cmd.Context())
		},
	}
	f := c.Flags()
	f.StringVar(&env.DataDir, "data-dir", "", "where the embedded store keeps its data (default: a temporary directory)")
	f.BoolVar(&env.Keep, "keep", false, "keep the temporary data directory")
	sf.Bind(f)
	f.StringVar(&sf.Backend, "backend", "chdb", "alias of --store")
	run.Bind(f)
	return c
}

// bench query is bench store's query mode with the dataset of the
// aggregator issue: 100M raw events over 30 days for 100,000 keys.
func newBenchQueryCmd(g *globals) *cobra.Command {
	c := newBenchStoreCmd(g)
	c.Use = "query"
	c.Short = "Per-key 30-day usage and filtered log page latencies over a generated history (default 100M events, 30 days, 100k keys)"
	c.Example = `  keymeter bench query                         # 100M rows: builds for ~10 min, then 300 queries of each kind
  keymeter bench query --query-rows 20000000 --keys 10000`
	for name, v := range map[string]string{"query-rows": "100000000", "span": "720h", "keys": "100000", "queries": "300"} {
		f := c.Flags().Lookup(name)
		_ = f.Value.Set(v)
		f.DefValue = v
	}
	return c
}

func newBenchDetectCmd(g *globals) *cobra.Command {
	var (
		rulesPaths []string
		mature     bool
		cfg        bench.DetectConfig
	)
	c := &cobra.Command{
		Use:   "detect",
		Short: "Push N synthetic events through a rule set: events/s, groups and memory",
		Long: `Generates a realistic event mix (mostly valid traffic over --keys keys, some
anonymous, malformed, unknown and revoked requests, a few roaming keys) and
pushes it through the rule set with the rules split over --workers engines,
each on its own core, every engine seeing every event.

A generator goroutine fills a small pool of batches while the engines work.
events_per_s is events over the wall time of the whole run (the generator
competes for the same cores). events_per_cpu_s is events per CPU second of
the process minus what generating them costs (gen_cpu_s, measured alone
before the run): on a shared machine the figure that does not depend on
what else runs. rss_mb is the resident memory at the end, with every group
still in memory; groups is their number summed over the rules.`,
		Example: "  keymeter bench detect --rules rules/ --events 2000000\n  keymeter bench detect --rules rules/ --events 10000000 --keys 1000000   # memory with 1M active groups per rule",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := loadRules(rulesPaths)
			if err != nil {
				return err
			}
			cfg.Rules, cfg.Detect = set, detect.Config{MaxRevocationsPerHour: -1}
			if mature {
				cfg.Detect.Profiles = detect.ProfileConfig{Maturity: time.Second, Seasonal: time.Second, NoveltyGrace: time.Second}
			}
			cfg.Output = bench.Output{Out: os.Stdout, Progress: os.Stderr}
			return bench.RunDetect(cmd.Context(), cfg)
		},
	}
	f := c.Flags()
	f.StringSliceVar(&rulesPaths, "rules", nil, "rule files or directories (default: ./rules if it exists, else the starter rules built into the binary)")
	cfg.Bind(f)
	f.BoolVar(&mature, "mature-profiles", false, "treat every key's profile as mature from its first second, so profile-guarded rules evaluate their whole conditions as in steady state (the synthetic history covers seconds)")
	return c
}
