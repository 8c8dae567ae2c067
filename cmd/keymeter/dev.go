package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/loadgen"
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
		RunE: func(cmd *cobra.Command, _ []string) error { return runDev(cmd.Context(), g, o) },
	}
	f := c.Flags()
	o.bf.add(f)
	f.StringVar(&o.sf.DataDir, "data-dir", "data", "where state lives (NATS store, ClickHouse data, spool, demo keys)")
	o.sf.add(f)
	o.df.add(c)
	o.df.demoDefaults(c)
	o.lf.add(f)
	f.DurationVar(&o.duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	f.IntVar(&o.natsPort, "nats-port", 4222, "port of the embedded NATS server on 127.0.0.1 (0: in-process only)")
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
	dataDir := o.sf.DataDir
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	start := time.Now()

	// Store first: if the embedded engine is missing, say so before anything starts.
	st, err := o.sf.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}

	// Bus: an embedded NATS server that other processes can reach too.
	var b *openedBus
	if o.bf.Backend == "nats" && o.bf.NATSURL == "" {
		ec := natsbus.EmbeddedConfig{DataDir: filepath.Join(dataDir, "nats"), Listen: o.natsPort != 0, Port: o.natsPort}
		emb, err := natsbus.StartEmbedded(ec)
		if err != nil {
			return fmt.Errorf("embedded NATS (port %d; change with --nats-port): %w", o.natsPort, err)
		}
		nb, err := natsbus.New(ctx, natsbus.Config{Prefix: o.bf.Prefix, Partitions: o.bf.Partitions, MaxPending: o.bf.MaxPending}, natsbus.WithEmbedded(emb), natsbus.WithLogger(log))
		if err != nil {
			emb.Shutdown()
			return err
		}
		b = &openedBus{Bus: nb, embedded: emb}
	} else if b, err = o.bf.open(ctx, dataDir, log); err != nil {
		return err
	}
	defer b.closeSoon()

	// Two groups so shutdown runs in order: the front (traffic, verifier)
	// stops and flushes first, then the back (aggregator, detector, API)
	// drains what is on the bus and stops.
	backCtx, backCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer backCancel()
	stop := context.AfterFunc(backCtx, cancel) // a failing back part stops the front too
	defer stop()
	back, ectx := errgroup.WithContext(backCtx)
	front, fctx := errgroup.WithContext(ctx)
	// On an early return, everything started stops before the store and
	// the bus close (deferred earlier, so they run after this).
	defer func() {
		cancel()
		backCancel()
		_ = front.Wait()
		_ = back.Wait()
	}()
	eg := back
	table := keys.NewTable(keys.TableConfig{KeepState: true, Logger: log})
	eg.Go(func() error { return table.Run(ectx, b) })
	select {
	case <-table.Ready():
	case <-ectx.Done():
		return back.Wait()
	}
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: b, Table: table, Logger: log})
	if err != nil {
		return err
	}
	token, err := devAdminToken(dataDir)
	if err != nil {
		return err
	}
	demo, err := devDemoKeys(ectx, svc, table, dataDir, o.demoKeys)
	if err != nil {
		return err
	}

	// Demo upstream.
	upLn, err := listen("127.0.0.1:0", "demo upstream")
	if err != nil {
		return err
	}
	front.Go(func() error { return serve(fctx, upLn, demoUpstream(), log) })

	// Verifier in front of it.
	proxyReady := make(chan struct{})
	proxyAddr := o.proxyListen
	vcfg := verifier.RunConfig{
		Listen: o.proxyListen, Upstream: "http://" + upLn.Addr().String(), AdminListen: o.adminListen,
		DataDir: filepath.Join(dataDir, "verifier"), VerifierID: "dev-verifier", Bus: b.Bus, Logger: log,
		HTTP: verifier.HTTPConfig{CountryHeader: "CF-IPCountry", TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}},
		OnListen: func(main, _, _ net.Addr) {
			if main != nil {
				proxyAddr = main.String()
			}
			close(proxyReady)
		},
	}
	if err := os.MkdirAll(vcfg.DataDir, 0o750); err != nil {
		return err
	}
	front.Go(func() error { return verifier.Run(fctx, vcfg) })

	// Aggregator with quotas.
	reg := newRegistry()
	quotas, err := aggregator.NewQuotas(aggregator.QuotaConfig{}, table, b.Bus, st, log)
	if err != nil {
		return err
	}
	agg, err := aggregator.New(aggregator.Config{FlushInterval: time.Second}, b.Bus, st, aggregator.WithLogger(log), aggregator.WithObserver(quotas), aggregator.WithRegisterer(reg))
	if err != nil {
		return err
	}
	eg.Go(func() error { return agg.Run(ectx) })

	// Detector with the starter rules.
	det, err := buildDetector(ectx, &o.df, b, st, svc, reg, log)
	if err != nil {
		return err
	}
	det.run(ectx, eg)

	// API.
	lh, err := o.lf.handler(table, svc, b, st)
	if err != nil {
		return err
	}
	tok, _ := api.ParseToken("admin:" + api.HashToken(token))
	apiSrv, err := api.New(api.Config{Tokens: []api.Token{tok}, Keys: svc, KeyTable: table, Usage: st, Logs: st, Decision: st,
		Billing: newBilling(st), Rules: det.engine, Leaks: lh, Events: busEventSink{pub: b.Publisher()}, Logger: log, Ready: table.Loaded})
	if err != nil {
		return err
	}
	apiLn, err := listen(o.apiListen, "--api-listen")
	if err != nil {
		return err
	}
	eg.Go(func() error { return serve(ectx, apiLn, instrument(reg, "api", apiSrv), log) })
	var metricsAddr string
	if o.metricsListen != "" {
		mln, err := listen(o.metricsListen, "--metrics-listen")
		if err != nil {
			return err
		}
		metricsAddr = mln.Addr().String()
		eg.Go(func() error { return serve(ectx, mln, metricsHandler(reg, table.Loaded), log) })
	}

	select {
	case <-proxyReady:
	case <-fctx.Done():
		_ = front.Wait()
		backCancel()
		return back.Wait()
	}
	natsURL := "in-process"
	if b.embedded != nil && b.embedded.ClientURL() != "" {
		natsURL = b.embedded.ClientURL()
	}
	fmt.Fprintf(os.Stderr, `
keymeter dev is running (data in %s)
  verifier (proxy to the demo API)  http://%s        e.g. curl -H "Authorization: Bearer $(cut -d, -f3 %s | head -1)" http://%s/v1/items
  REST API                          http://%s        OpenAPI at /openapi.yaml
  verifier metrics                  http://%s/metrics
  pipeline metrics                  http://%s/metrics (aggregator, detector, API)
  NATS                              %s
  admin token                       %s   (export KEYMETER_TOKEN=%s; stored in %s)
  demo keys                         %d, secrets in %s
`, dataDir, proxyAddr, filepath.Join(dataDir, "demo-keys.csv"), proxyAddr, apiLn.Addr(), o.adminListen, metricsAddr, natsURL,
		token, token, filepath.Join(dataDir, "admin-token"), len(demo), filepath.Join(dataDir, "demo-keys.csv"))

	// Traffic.
	var sent, refused atomic.Uint64
	if !o.noTraffic {
		front.Go(func() error {
			return devTraffic(fctx, o, demo, "http://"+proxyAddr, func(_ *loadgen.Request, status int) {
				sent.Add(1)
				if status >= 400 {
					refused.Add(1)
				}
			})
		})
	}

	// Summary line every few seconds, cumulative since start.
	eg.Go(func() error {
		t := time.NewTicker(o.summaryEvery)
		defer t.Stop()
		for {
			select {
			case <-ectx.Done():
				return nil
			case <-t.C:
			}
			el := time.Since(start).Seconds()
			s := agg.Stats()
			dc := det.det.Counts()
			fmt.Printf("requests=%d requests_per_s=%.0f refused=%d stored=%d decisions=%d revoked=%d dead_lettered=%d keys=%d uptime_s=%.0f\n",
				sent.Load(), float64(sent.Load())/el, refused.Load(), s.Events, dc.Decisions.Load(), dc.Revoked.Load(), s.DeadLettered, table.Len(), el)
		}
	})
	ferr := front.Wait()
	// The verifier flushed its last batches to the bus: let the aggregator
	// store them before the back stops.
	for last, deadline := agg.Stats().Events, time.Now().Add(10*time.Second); time.Now().Before(deadline); {
		time.Sleep(1500 * time.Millisecond)
		now := agg.Stats().Events
		if now == last {
			break
		}
		last = now
	}
	backCancel()
	err = errors.Join(ferr, back.Wait())
	s := agg.Stats()
	dc := det.det.Counts()
	fmt.Printf("final requests=%d refused=%d stored=%d decisions=%d revoked=%d\n", sent.Load(), refused.Load(), s.Events, dc.Decisions.Load(), dc.Revoked.Load())
	if err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
		return err
	}
	return nil
}

// devTraffic runs the load generator in chunks until ctx ends.
func devTraffic(ctx context.Context, o *devOptions, demo []loadgen.Key, target string, onResp func(*loadgen.Request, int)) error {
	const chunk = 5 * time.Minute
	for i := uint64(0); ctx.Err() == nil; i++ {
		lg := loadgen.Config{Scenarios: append([]string{"normal"}, o.attacks...), Rate: o.rate, Duration: chunk, Seed: o.seed + i,
			Keys: demo, AttackEvery: o.attackEvery, AttackAfter: o.attackAfter}
		if i > 0 {
			lg.AttackAfter = o.attackEvery
		}
		// Attacks take a key each: rotate the victims through the demo keys.
		off := int(i*7) % len(demo)
		lg.Keys = append(append([]loadgen.Key{}, demo[off:]...), demo[:off]...)
		reqs, err := loadgen.Generate(lg)
		if err != nil {
			return err
		}
		if _, err := loadgen.SendHTTP(ctx, loadgen.HTTPConfig{Target: target, OnResponse: onResp, Workers: 16}, reqs); err != nil {
			return err
		}
	}
	return nil
}

// devAdminToken returns the demo admin token, created on first start.
func devAdminToken(dataDir string) (string, error) {
	p := filepath.Join(dataDir, "admin-token")
	if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	tok := "kmadm_" + hex.EncodeToString(raw)
	if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
		return "", err
	}
	return tok, nil
}

// devDemoKeys loads the demo keys of an earlier run that are still active
// and creates more until there are n. The secrets are kept in
// <data-dir>/demo-keys.csv (mode 0600): a demo convenience only.
func devDemoKeys(ctx context.Context, svc *keys.Service, table *keys.Table, dataDir string, n int) ([]loadgen.Key, error) {
	p := filepath.Join(dataDir, "demo-keys.csv")
	var out []loadgen.Key
	if old, err := readKeysFile(p); err == nil {
		for _, k := range old {
			if st, ok := table.State(k.ID); ok && st.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_ACTIVE {
				out = append(out, k)
			}
		}
	}
	for i := len(out); i < n; i++ {
		c, err := svc.Create(ctx, keys.CreateParams{Project: fmt.Sprintf("proj_demo_%d", i%3), Name: fmt.Sprintf("demo %d", i), Owner: "dev",
			KeyLimits: keys.KeyLimits{RatePerS: 50, Burst: 100, MonthlyQuota: 5_000_000}})
		if err != nil {
			return nil, fmt.Errorf("demo key: %w", err)
		}
		out = append(out, loadgen.Key{ID: c.State.GetId(), Project: c.State.GetProject(), Secret: c.Secret.Reveal()})
	}
	var sb strings.Builder
	sb.WriteString("# demo keys of keymeter dev: key_id,project,secret (demo only: real secrets are never stored)\n")
	for _, k := range out {
		fmt.Fprintf(&sb, "%s,%s,%s\n", k.ID, k.Project, k.Secret)
	}
	if err := os.WriteFile(p, []byte(sb.String()), 0o600); err != nil {
		return nil, err
	}
	return out, nil
}

func demoUpstream() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"ok":true,"path":%q,"key_id":%q,"items":[1,2,3,4,5,6,7,8,9,10]}`+"\n", r.URL.Path, r.Header.Get("X-Keymeter-Key-Id"))
	})
}
