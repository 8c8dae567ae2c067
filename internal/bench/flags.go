package bench

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/busopen"
)

// The flags of `keymeter bench ...`: each harness's config binds its own,
// so that a subcommand is only its help text and what it opens.

// Env is what a bus benchmark runs on: the bus of the bus flags, opened
// with a fresh prefix so that an earlier run's events are not counted, on
// a data directory (a temporary one unless --data-dir is given).
type Env struct {
	Bus     busopen.Config
	DataDir string
	Keep    bool
}

// Bind defines the bus flags, --data-dir and --keep on fs.
func (e *Env) Bind(fs *pflag.FlagSet) {
	e.Bus.Bind(fs)
	fs.StringVar(&e.DataDir, "data-dir", "", "where the embedded server and the benchmark keep their state (default: a temporary directory)")
	fs.BoolVar(&e.Keep, "keep", false, "keep the temporary data directory")
}

// Open makes the data directory and opens the bus on it with the prefix
// name plus a number from the clock. closeAll closes the bus (10 s of
// grace) and removes a temporary directory unless --keep.
func (e *Env) Open(ctx context.Context, name string, log *slog.Logger) (b bus.Bus, dir string, closeAll func(), err error) {
	dir, cleanup, err := DataDir(e.DataDir, e.Keep, name)
	if err != nil {
		return nil, "", nil, err
	}
	e.Bus.Prefix = Prefix("bench" + name)
	if b, err = busopen.Open(ctx, e.Bus, dir, log); err != nil {
		cleanup()
		return nil, "", nil, err
	}
	return b, dir, func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Close(cctx)
		cleanup()
	}, nil
}

// Prefix is a fresh bus prefix, so an earlier run's events are not counted.
func Prefix(name string) string {
	return fmt.Sprintf("%s%d", name, time.Now().UnixNano()%1_000_000_000)
}

// Bind defines bench bus's flags.
func (c *BusConfig) Bind(fs *pflag.FlagSet) {
	fs.IntVar(&c.Events, "events", 2_000_000, "events to publish")
	fs.IntVar(&c.Batch, "batch", 1000, "events per bus message")
}

// Bind defines bench pipeline's flags.
func (c *PipelineConfig) Bind(fs *pflag.FlagSet) {
	fs.String("store", "chdb", "store backend (chdb)")
	fs.IntVar(&c.Events, "events", 2_000_000, "events to publish")
	fs.IntVar(&c.Batch, "batch", 1000, "events per bus message")
	fs.IntVar(&c.Keys, "keys", 1000, "distinct keys")
	fs.IntVar(&c.BlockSize, "max-block-events", 100_000, "aggregator block size")
	fs.IntVar(&c.BurstBlockSize, "max-burst-block-events", 0, "largest aggregator block under a backlog (0: 2×max-block-events; equal to it: no growth)")
	c.MemoryLimit = aggregator.AutoMemoryLimit()
	fs.Var(&c.MemoryLimit, "memory-limit", "Go runtime soft memory limit for the run, as the aggregator role sets it: auto, off or a size (GOMEMLIMIT wins)")
	fs.BoolVar(&c.CompareStore, "compare-store", false, "first insert the same events into the store alone (blocks of --max-block-events) and print both rates and their ratio")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the pipeline phase to this file")
	fs.StringVar(&c.MemProfile, "memprofile", "", "write a heap profile (taken when the last events are stored) to this file")
}

// Bind defines bench revocation's flags.
func (c *RevocationConfig) Bind(fs *pflag.FlagSet) {
	fs.IntVar(&c.Verifiers, "verifiers", 3, "verifier key tables, each on its own bus connection")
	fs.IntVar(&c.Keys, "keys", 100_000, "keys in the table")
	fs.IntVar(&c.Revocations, "revocations", 200, "revocations to time")
}

// Bind defines bench proxy's flags.
func (c *ProxyConfig) Bind(fs *pflag.FlagSet) {
	fs.IntVar(&c.Connections, "connections", 64, "concurrent keep-alive connections")
	fs.DurationVar(&c.Duration, "duration", 5*time.Second, "length of each measurement")
	fs.IntVar(&c.Rounds, "rounds", 2, "alternating bare/keymeter rounds")
	fs.IntVar(&c.Keys, "keys", 10_000, "keys in the table (requests use them round-robin)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the first keymeter round to this file")
	fs.BoolVar(&c.DurableLog, "durable-log", false, "also measure a verifier with --durable-log, alternating with the others (durable_* figures)")
	fs.BoolVar(&c.Nginx, "nginx", false, "also measure Debian's nginx with the shipped config, alone and with keymeter forward-auth (nginx_* figures)")
	fs.StringVar(&c.NginxBin, "nginx-bin", "/usr/sbin/nginx", "nginx binary for --nginx")
	fs.StringVar(&c.NginxConf, "nginx-conf", "", "the nginx.conf for --nginx (ports and paths are rewritten; default: the shipped deploy/proxy/nginx.conf, built in)")
}

// Bind defines bench revoke-e2e's own flags (the detector's are its role's).
func (c *RevokeConfig) Bind(fs *pflag.FlagSet) {
	fs.IntVar(&c.Trials, "trials", 100, "revocations to time")
	fs.DurationVar(&c.FlushInterval, "flush-interval", 50*time.Millisecond, "verifier event batch flush interval")
}

// Bind defines bench detect's sizes.
func (c *DetectConfig) Bind(fs *pflag.FlagSet) {
	fs.IntVar(&c.Events, "events", 2_000_000, "events to push through")
	fs.IntVar(&c.Keys, "keys", 100_000, "distinct keys in the traffic (≈ active groups per key-grouped rule; 1000000 for the memory figure)")
	fs.IntVar(&c.Workers, "workers", runtime.NumCPU(), "engines (cores) the rules are split over")
	fs.IntVar(&c.Batch, "batch", 4096, "events per batch")
}

// Bind defines bench store's (and bench query's) flags, but the store's.
func (r *StoreRun) Bind(fs *pflag.FlagSet) {
	fs.IntVar(&r.Events, "events", 2_000_000, "events to insert")
	fs.IntVar(&r.Batch, "batch", 500_000, "events per insert (one exactly-once bus range)")
	fs.IntVar(&r.Keys, "keys", 1000, "distinct API keys")
	fs.BoolVar(&r.NoWarmup, "no-warmup", false, "skip the untimed warm-up batch (measures a cold process)")
	fs.IntVar(&r.Writers, "writers", 2, "concurrent InsertEvents callers (an aggregator inserts its partitions concurrently)")
	fs.StringVar(&r.Rollups, "rollups", "preaggregated", "how rollups are fed: preaggregated (the store's way), views (materialized view over raw rows), both")
	fs.DurationVar(&r.Span, "span", time.Hour, "time the events cover, ending now (720h for a 30-day query dataset)")
	fs.IntVar(&r.QueryRows, "query-rows", 0, "instead of the insert benchmark: generate this many raw rows in the engine over --span and measure queries (e.g. 100000000 with --span 720h --keys 10000)")
	fs.IntVar(&r.Queries, "queries", 0, "after inserting, run this many per-key 30-day usage queries and filtered log pages (p50/p99)")
}
