package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/demo"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/loadgen"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/verifier"
)

func init() { register(newDevCmd) }

type devOptions struct {
	bf            busFlags
	sf            storeFlags
	df            detectorFlags
	lf            leakFlags
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
	o.sf.add(f)
	o.df.add(c)
	o.df.demoDefaults(c)
	o.lf.add(f)
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
	d := &devRun{o: o, log: g.Logger(), dataDir: o.sf.DataDir, start: time.Now(), reg: newRegistry()}
	closeAll, err := d.open(ctx)
	if err != nil {
		return err
	}
	defer closeAll() // last: the store, then the bus

	// The front (traffic, verifier) is the intake; the back (key table,
	// aggregator, detector, API) outlives it until the bus is drained.
	backCtx, backCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer backCancel()
	stop := context.AfterFunc(backCtx, cancel) // a failing back part stops the front too
	defer stop()
	back, bctx := errgroup.WithContext(backCtx)
	front, fctx := errgroup.WithContext(ctx)
	// On an early return, everything started stops before the store and
	// the bus close.
	defer func() {
		cancel()
		backCancel()
		_ = front.Wait()
		_ = back.Wait()
	}()
	if err := d.startBack(bctx, back); err != nil {
		return err
	}
	if err := d.startFront(fctx, front); err != nil {
		return err
	}
	back.Go(func() error { return d.summaries(bctx) })

	// Shutdown, in order: stop intake (the verifier flushes its spool to
	// the bus), wait until the aggregator has consumed everything on the
	// bus, stop the back roles; the store and then the bus close last.
	ferr := front.Wait()
	d.drain(backCtx, 30*time.Second)
	backCancel()
	err = errors.Join(ferr, back.Wait())
	s := d.aggStats()
	dc := d.det.det.Counts()
	fmt.Printf("final requests=%d refused=%d stored=%d decisions=%d revoked=%d\n", d.sent.Load(), d.refused.Load(), s.Events, dc.Decisions.Load(), dc.Revoked.Load())
	if err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
		return err
	}
	return nil
}

// devRun is a running keymeter dev: what its parts share.
type devRun struct {
	o       *devOptions
	log     *slog.Logger
	dataDir string
	start   time.Time
	reg     *prometheus.Registry

	st       *store.DB
	b        bus.Bus
	natsNote string
	table    *keys.Table
	svc      *keys.Service
	token    string
	demo     []loadgen.Key
	agg      atomic.Pointer[aggregator.Aggregator]
	det      *detectorParts

	apiAddr, metricsAddr, proxyAddr string
	sent, refused                   atomic.Uint64
}

// open opens the store (first: if the embedded engine is missing, say so
// before anything starts), migrates it, and opens the bus. close closes the
// store, then the bus.
func (d *devRun) open(ctx context.Context) (close func(), err error) {
	if err := os.MkdirAll(d.dataDir, 0o750); err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	if d.st, err = d.o.sf.open(ctx); err != nil {
		return nil, err
	}
	if _, err := d.st.Migrate(ctx); err != nil {
		d.st.Close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if d.b, d.natsNote, err = openDevBus(ctx, d.o, d.log); err != nil {
		d.st.Close()
		return nil, err
	}
	return func() {
		d.st.Close()
		closeSoon(d.b)
	}, nil
}

// startBack starts the key table, then (once it is loaded) the aggregator,
// the detector, the API and the pipeline's metrics endpoint.
func (d *devRun) startBack(ctx context.Context, eg *errgroup.Group) error {
	var err error
	if d.table, d.svc, err = keyService(d.b, d.log); err != nil {
		return err
	}
	eg.Go(func() error { return d.table.Run(ctx, d.b) })
	select {
	case <-d.table.Ready():
	case <-ctx.Done():
		if err := eg.Wait(); err != nil {
			return err
		}
		return ctx.Err()
	}
	if d.token, err = demo.AdminToken(d.dataDir); err != nil {
		return err
	}
	keysFile := filepath.Join(d.dataDir, "demo-keys.csv")
	previous, _ := loadgen.ReadKeysFile(keysFile) // none on a first start
	if d.demo, err = demo.Keys(ctx, demo.KeysConfig{KeyLog: d.b, Table: d.table, File: keysFile, Previous: previous, N: d.o.demoKeys, Logger: d.log}); err != nil {
		return err
	}
	eg.Go(func() error {
		return aggregator.Run(ctx, aggregator.RunConfig{Aggregator: aggregator.Config{FlushInterval: time.Second}, Bus: d.b, Store: d.st,
			Table: d.table, Registry: d.reg, Logger: d.log, Started: d.agg.Store})
	})
	if d.det, err = buildDetector(ctx, &d.o.df, d.b, d.st, d.svc, d.reg, d.log); err != nil {
		return err
	}
	d.det.run(ctx, eg)
	return d.startAPI(ctx, eg)
}

// startAPI starts the API role on the shared key table and the metrics
// endpoint of the aggregator, detector and API.
func (d *devRun) startAPI(ctx context.Context, eg *errgroup.Group) error {
	leakCfg, err := d.o.lf.config()
	if err != nil {
		return err
	}
	tok, _ := api.ParseToken("admin:" + api.HashToken(d.token))
	listening := make(chan struct{})
	acfg := api.RunConfig{Listen: d.o.apiListen, Tokens: []api.Token{tok}, Bus: d.b, Store: d.st, Table: d.table, Keys: d.svc,
		Leaks: leakCfg, Rules: d.det.engine, Registry: d.reg, Logger: d.log,
		OnListen: func(a, _ net.Addr) { d.apiAddr = a.String(); close(listening) }}
	errc := make(chan error, 1)
	eg.Go(func() error { err := api.Run(ctx, acfg); errc <- err; return err })
	select {
	case <-listening:
	case err := <-errc:
		if err == nil {
			err = ctx.Err()
		}
		return err
	}
	if d.o.metricsListen != "" {
		mln, err := listen(d.o.metricsListen, "--metrics-listen")
		if err != nil {
			return err
		}
		d.metricsAddr = mln.Addr().String()
		eg.Go(func() error { return serve(ctx, mln, metricsHandler(d.reg, d.table.Loaded), d.log) })
	}
	return nil
}

// startFront starts the demo upstream and the verifier in front of it,
// prints the banner once the verifier listens, and starts the traffic.
func (d *devRun) startFront(ctx context.Context, eg *errgroup.Group) error {
	upLn, err := listen("127.0.0.1:0", "demo upstream")
	if err != nil {
		return err
	}
	eg.Go(func() error { return serve(ctx, upLn, demo.Upstream(), d.log) })
	proxyReady := make(chan struct{})
	d.proxyAddr = d.o.proxyListen
	vcfg := verifier.RunConfig{
		Listen: d.o.proxyListen, Upstream: "http://" + upLn.Addr().String(), AdminListen: d.o.adminListen,
		DataDir: filepath.Join(d.dataDir, "verifier"), VerifierID: "dev-verifier", Bus: d.b, Logger: d.log,
		HTTP: verifier.HTTPConfig{CountryHeader: "CF-IPCountry", TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}},
		OnListen: func(main, _, _ net.Addr) {
			if main != nil {
				d.proxyAddr = main.String()
			}
			close(proxyReady)
		},
	}
	if err := os.MkdirAll(vcfg.DataDir, 0o750); err != nil {
		return err
	}
	eg.Go(func() error { return verifier.Run(ctx, vcfg) })
	select {
	case <-proxyReady:
	case <-ctx.Done():
		return nil // the caller's Wait returns the cause
	}
	d.banner()
	if !d.o.noTraffic {
		eg.Go(func() error {
			return demo.Traffic(ctx, demo.TrafficConfig{Target: "http://" + d.proxyAddr, Keys: d.demo, Rate: d.o.rate, Attacks: d.o.attacks,
				AttackEvery: d.o.attackEvery, AttackAfter: d.o.attackAfter, Seed: d.o.seed,
				OnResponse: func(_ *loadgen.Request, status int) {
					d.sent.Add(1)
					if status >= 400 {
						d.refused.Add(1)
					}
				}})
		})
	}
	return nil
}

func (d *devRun) banner() {
	tokenFile := filepath.Join(d.dataDir, "admin-token")
	keysFile := filepath.Join(d.dataDir, "demo-keys.csv")
	fmt.Fprintf(os.Stderr, `
keymeter dev is running (data in %s)
  verifier (proxy to the demo API)  http://%s        e.g. curl -H "Authorization: Bearer $(cut -d, -f3 %s | head -1)" http://%s/v1/items
  REST API                          http://%s        OpenAPI at /openapi.yaml
  web console                       http://%s/console/  (sign in with the admin token)
  verifier metrics                  http://%s/metrics
  pipeline metrics                  http://%s/metrics (aggregator, detector, API)
  NATS                              %s
  admin token                       in %s (mode 0600): export KEYMETER_TOKEN=$(cat %s)
  demo keys                         %d, secrets in %s
`, d.dataDir, d.proxyAddr, keysFile, d.proxyAddr, d.apiAddr, d.apiAddr, d.o.adminListen, d.metricsAddr, d.natsNote,
		tokenFile, tokenFile, len(d.demo), keysFile)
}

func (d *devRun) aggStats() aggregator.Stats {
	if a := d.agg.Load(); a != nil {
		return a.Stats()
	}
	return aggregator.Stats{}
}

// summaries prints a summary line every few seconds, cumulative since
// start, until ctx ends.
func (d *devRun) summaries(ctx context.Context) error {
	t := time.NewTicker(d.o.summaryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		el := time.Since(d.start).Seconds()
		s := d.aggStats()
		dc := d.det.det.Counts()
		fmt.Printf("requests=%d requests_per_s=%.0f refused=%d stored=%d decisions=%d revoked=%d dead_lettered=%d keys=%d uptime_s=%.0f\n",
			d.sent.Load(), float64(d.sent.Load())/el, d.refused.Load(), s.Events, dc.Decisions.Load(), dc.Revoked.Load(), s.DeadLettered, d.table.Len(), el)
	}
}

// drain waits until the bus reports no lag for the aggregator's group:
// everything the stopped verifier published is stored. It gives up after
// limit (a broken store must not hold shutdown forever) and says so.
func (d *devRun) drain(ctx context.Context, limit time.Duration) {
	if ctx.Err() != nil {
		return // a back role failed: nothing consumes any more
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if total, err := bus.WaitDrained(ctx, d.b, "aggregator", 100*time.Millisecond); total != 0 || err != nil {
		d.log.Warn("dev: stopping with events not yet stored (they are stored at the next start)", "lag_batches", total, "err", err)
	}
}

// devNATSPort is the default port of dev's embedded NATS server.
const devNATSPort = 4222

// openDevBus opens the bus of keymeter dev and says in one line how other
// processes reach it. Without --nats-url the NATS bus starts an embedded
// server, owned by the bus, that requires the credentials in
// <data-dir>/nats.nk and listens on 127.0.0.1:--nats-port. When the port
// was not given on the command line and is taken (another nats-server, e.g.
// Debian's nats-server service on 4222, or a dev still stopping), dev serves
// in-process only and says so instead of failing; a port given with
// --nats-port must be free.
func openDevBus(ctx context.Context, o *devOptions, log *slog.Logger) (bus.Bus, string, error) {
	dataDir := o.sf.DataDir
	embedded := o.bf.Backend == "nats" && o.bf.NATSURL == ""
	note := ""
	if embedded {
		o.bf.natsPort = o.natsPort
		if o.natsPort > 0 && !o.natsPortSet && !portFree(o.natsPort) {
			o.bf.natsPort = 0
			note = fmt.Sprintf(" (127.0.0.1:%d is taken: --nats-port to listen elsewhere)", o.natsPort)
		}
	}
	b, err := o.bf.open(ctx, dataDir, log)
	if err != nil {
		if embedded && o.bf.natsPort != 0 {
			return nil, "", fmt.Errorf("embedded NATS on 127.0.0.1:%d (change with --nats-port, 0 for in-process only): %w", o.bf.natsPort, err)
		}
		return nil, "", err
	}
	switch nb, _ := b.(*natsbus.Bus); {
	case nb == nil:
		return b, o.bf.Backend + " (external)", nil
	case nb.Embedded() == nil:
		return b, "external server " + natsbus.Redact(o.bf.NATSURL), nil
	case nb.Embedded().ClientURL() == "":
		return b, "in-process only" + note, nil
	default:
		return b, fmt.Sprintf("%s, credentials in %s (keymeter logs --follow --nats-creds %s)", nb.Embedded().ClientURL(),
			nb.Embedded().CredsFile(), nb.Embedded().CredsFile()), nil
	}
}

// portFree reports whether 127.0.0.1:port can be listened on now.
func portFree(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
