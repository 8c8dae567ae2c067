// Package devstack runs `keymeter dev`: the whole pipeline in one process
// (key table, aggregator, detector, API, a demo upstream, the verifier in
// front of it and demo traffic with attacks) on a store and a bus the caller
// opened, with an ordered shutdown that stores everything the verifier
// published before the back roles stop.
package devstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/demo"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/httpserve"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/leaks"
	"github.com/keymeter/keymeter/internal/loadgen"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/verifier"
)

// Config is one dev stack.
type Config struct {
	DataDir string
	Store   *store.DB // opened and migrated by the caller
	Bus     bus.Bus
	BusNote string // how other processes reach the bus, for the banner

	// Detector is the detector role's configuration, acting through ka and
	// registering its metrics with reg.
	Detector func(ka detector.KeyActions, reg prometheus.Registerer) detector.RunConfig
	Leaks    leaks.Config

	ProxyListen, APIListen, AdminListen, MetricsListen string

	DemoKeys     int
	Rate         float64
	Attacks      []string
	AttackEvery  time.Duration
	AttackAfter  time.Duration
	Seed         uint64
	SummaryEvery time.Duration
	NoTraffic    bool

	Logger *slog.Logger
	Out    io.Writer // summary lines (default os.Stdout)
	Err    io.Writer // the banner (default os.Stderr)
}

// Run runs the stack until ctx ends (or a part fails), then shuts down in
// order and prints the final figures. The caller opened the store and the
// bus and closes them after Run returns.
func Run(ctx context.Context, cfg Config) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.Err == nil {
		cfg.Err = os.Stderr
	}
	d := &devRun{o: &cfg, log: cfg.Logger, dataDir: cfg.DataDir, start: time.Now(), reg: httpserve.NewRegistry(), st: cfg.Store, b: cfg.Bus, natsNote: cfg.BusNote}

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
	err := errors.Join(ferr, back.Wait())
	s := d.aggStats()
	dc := d.det.Detector().Counts()
	fmt.Fprintf(d.o.Out, "final requests=%d refused=%d stored=%d decisions=%d revoked=%d\n", d.sent.Load(), d.refused.Load(), s.Events, dc.Decisions.Load(), dc.Revoked.Load())
	if err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
		return err
	}
	return nil
}

// devRun is a running stack: what its parts share.
type devRun struct {
	o       *Config
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
	det      *detector.Role

	apiAddr, metricsAddr, proxyAddr string
	sent, refused                   atomic.Uint64
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
	if d.demo, err = demo.Keys(ctx, demo.KeysConfig{KeyLog: d.b, Table: d.table, File: keysFile, Previous: previous, N: d.o.DemoKeys, Logger: d.log}); err != nil {
		return err
	}
	eg.Go(func() error {
		return aggregator.Run(ctx, aggregator.RunConfig{Aggregator: aggregator.Config{FlushInterval: time.Second}, Bus: d.b, Store: d.st,
			Table: d.table, Registry: d.reg, Logger: d.log, Started: d.agg.Store})
	})
	if d.det, err = detector.Assemble(ctx, d.o.Detector(d.svc, d.reg)); err != nil {
		return err
	}
	eg.Go(func() error { return d.det.Run(ctx) })
	return d.startAPI(ctx, eg)
}

// startAPI starts the API role on the shared key table and the metrics
// endpoint of the aggregator, detector and API.
func (d *devRun) startAPI(ctx context.Context, eg *errgroup.Group) error {
	tok, _ := api.ParseToken("admin:" + api.HashToken(d.token))
	listening := make(chan struct{})
	acfg := api.RunConfig{Listen: d.o.APIListen, Tokens: []api.Token{tok}, Bus: d.b, Store: d.st, Table: d.table, Keys: d.svc,
		Leaks: d.o.Leaks, Rules: d.det.Engine(), Registry: d.reg, Logger: d.log,
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
	if d.o.MetricsListen != "" {
		mln, err := httpserve.Listen(d.o.MetricsListen, "--metrics-listen")
		if err != nil {
			return err
		}
		d.metricsAddr = mln.Addr().String()
		eg.Go(func() error { return httpserve.Serve(ctx, mln, httpserve.Admin(d.reg, d.table.Loaded), d.log) })
	}
	return nil
}

// startFront starts the demo upstream and the verifier in front of it,
// prints the banner once the verifier listens, and starts the traffic.
func (d *devRun) startFront(ctx context.Context, eg *errgroup.Group) error {
	upLn, err := httpserve.Listen("127.0.0.1:0", "demo upstream")
	if err != nil {
		return err
	}
	eg.Go(func() error { return httpserve.Serve(ctx, upLn, demo.Upstream(), d.log) })
	proxyReady := make(chan struct{})
	d.proxyAddr = d.o.ProxyListen
	vcfg := verifier.RunConfig{
		Listen: d.o.ProxyListen, Upstream: "http://" + upLn.Addr().String(), AdminListen: d.o.AdminListen,
		DataDir: filepath.Join(d.dataDir, "verifier"), VerifierID: "dev-verifier", Bus: d.b, Registry: d.reg, Logger: d.log,
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
	if !d.o.NoTraffic {
		eg.Go(func() error {
			return demo.Traffic(ctx, demo.TrafficConfig{Target: "http://" + d.proxyAddr, Keys: d.demo, Rate: d.o.Rate, Attacks: d.o.Attacks,
				AttackEvery: d.o.AttackEvery, AttackAfter: d.o.AttackAfter, Seed: d.o.Seed,
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
	fmt.Fprintf(d.o.Err, `
keymeter dev is running (data in %s)
  verifier (proxy to the demo API)  http://%s        e.g. curl -H "Authorization: Bearer $(cut -d, -f3 %s | head -1)" http://%s/v1/items
  REST API                          http://%s        OpenAPI at /openapi.yaml
  web console                       http://%s/console/  (sign in with the admin token)
  metrics (every role)              http://%s/metrics and http://%s/metrics (one registry)
  NATS                              %s
  admin token                       in %s (mode 0600): export KEYMETER_TOKEN=$(cat %s)
  demo keys                         %d, secrets in %s
`, d.dataDir, d.proxyAddr, keysFile, d.proxyAddr, d.apiAddr, d.apiAddr, d.o.AdminListen, d.metricsAddr, d.natsNote,
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
	t := time.NewTicker(d.o.SummaryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		el := time.Since(d.start).Seconds()
		s := d.aggStats()
		dc := d.det.Detector().Counts()
		fmt.Fprintf(d.o.Out, "requests=%d requests_per_s=%.0f refused=%d stored=%d decisions=%d revoked=%d dead_lettered=%d keys=%d uptime_s=%.0f\n",
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

// keyService is a key table (full states kept) and the lifecycle service
// writing through it; the caller runs table.Run.
func keyService(b bus.KeyLog, log *slog.Logger) (*keys.Table, *keys.Service, error) {
	return keys.NewStateService(b, keys.WithLogger(log))
}
