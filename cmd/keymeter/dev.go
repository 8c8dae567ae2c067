package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/bus"
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

	b, natsNote, err := openDevBus(ctx, o, log)
	if err != nil {
		return err
	}
	defer closeSoon(b)

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
	table, svc, err := keyService(b, log)
	if err != nil {
		return err
	}
	eg.Go(func() error { return table.Run(ectx, b) })
	select {
	case <-table.Ready():
	case <-ectx.Done():
		return back.Wait()
	}
	token, err := devAdminToken(dataDir)
	if err != nil {
		return err
	}
	demo, err := devDemoKeys(ectx, b, table, dataDir, o.demoKeys, log)
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
		DataDir: filepath.Join(dataDir, "verifier"), VerifierID: "dev-verifier", Bus: b, Logger: log,
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
	quotas, err := aggregator.NewQuotas(aggregator.QuotaConfig{}, table, b, st, log)
	if err != nil {
		return err
	}
	agg, err := aggregator.New(aggregator.Config{FlushInterval: time.Second}, b, st, aggregator.WithLogger(log), aggregator.WithObserver(quotas), aggregator.WithRegisterer(reg))
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
	sink, err := api.NewBusSink(b.Publisher())
	if err != nil {
		return err
	}
	tok, _ := api.ParseToken("admin:" + api.HashToken(token))
	apiSrv, err := api.New(api.Config{Tokens: []api.Token{tok}, Keys: svc, KeyTable: table, Usage: st, Logs: st, Decision: st,
		Billing: newBilling(st), Rules: det.engine, Leaks: lh, Events: sink, Logger: log, Ready: table.Loaded})
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
	tokenFile := filepath.Join(dataDir, "admin-token")
	fmt.Fprintf(os.Stderr, `
keymeter dev is running (data in %s)
  verifier (proxy to the demo API)  http://%s        e.g. curl -H "Authorization: Bearer $(cut -d, -f3 %s | head -1)" http://%s/v1/items
  REST API                          http://%s        OpenAPI at /openapi.yaml
  verifier metrics                  http://%s/metrics
  pipeline metrics                  http://%s/metrics (aggregator, detector, API)
  NATS                              %s
  admin token                       in %s (mode 0600): export KEYMETER_TOKEN=$(cat %s)
  demo keys                         %d, secrets in %s
`, dataDir, proxyAddr, filepath.Join(dataDir, "demo-keys.csv"), proxyAddr, apiLn.Addr(), o.adminListen, metricsAddr, natsNote,
		tokenFile, tokenFile, len(demo), filepath.Join(dataDir, "demo-keys.csv"))

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
		return b, "external server " + withoutUserinfo(o.bf.NATSURL), nil
	case nb.Embedded().ClientURL() == "":
		return b, "in-process only" + note, nil
	default:
		return b, fmt.Sprintf("%s, credentials in %s (keymeter logs --follow --nats-creds %s)", nb.Embedded().ClientURL(),
			nb.Embedded().CredsFile(), nb.Embedded().CredsFile()), nil
	}
}

// withoutUserinfo hides user and password in a comma-separated URL list.
func withoutUserinfo(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = url.User("***")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
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

// devAdminToken returns the demo admin token, created on first start in
// <data-dir>/admin-token (mode 0600; a file others can read is refused).
func devAdminToken(dataDir string) (string, error) {
	p := filepath.Join(dataDir, "admin-token")
	if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s has mode %04o: others may read the admin token; chmod 600 it", p, fi.Mode().Perm())
	}
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
// and creates more until there are n, and logs one line about them (not one
// per key). The secrets are kept in <data-dir>/demo-keys.csv (mode 0600): a
// demo convenience only.
func devDemoKeys(ctx context.Context, kl bus.KeyLog, table *keys.Table, dataDir string, n int, log *slog.Logger) ([]loadgen.Key, error) {
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: kl, Table: table, Logger: quietLogger(log)})
	if err != nil {
		return nil, err
	}
	p := filepath.Join(dataDir, "demo-keys.csv")
	var out []loadgen.Key
	if old, err := readKeysFile(p); err == nil {
		for _, k := range old {
			if st, ok := table.State(k.ID); ok && st.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_ACTIVE {
				out = append(out, k)
			}
		}
	}
	kept := len(out)
	for i := len(out); i < n; i++ {
		c, err := svc.Create(ctx, keys.CreateParams{Project: fmt.Sprintf("proj_demo_%d", i%3), Name: fmt.Sprintf("demo %d", i), Owner: "dev",
			KeyLimits: keys.KeyLimits{RatePerS: 50, Burst: 100, MonthlyQuota: 5_000_000}})
		if err != nil {
			return nil, fmt.Errorf("demo key: %w", err)
		}
		out = append(out, loadgen.Key{ID: c.State.GetId(), Project: c.State.GetProject(), Secret: c.Secret.Reveal()})
	}
	log.Info("demo keys ready", "keys", len(out), "created", len(out)-kept, "file", p)
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

// quietLogger passes on only the warnings and errors of log: for work that
// would otherwise log one line per item (demo keys).
func quietLogger(log *slog.Logger) *slog.Logger {
	return slog.New(minLevel{Handler: log.Handler(), min: slog.LevelWarn})
}

type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{Handler: h.Handler.WithAttrs(as), min: h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{Handler: h.Handler.WithGroup(name), min: h.min}
}
