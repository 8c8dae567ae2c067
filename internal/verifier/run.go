package verifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/keys"
)

// RunConfig configures the verifier role.
type RunConfig struct {
	// Listen serves the reverse proxy when Upstream is set, otherwise the
	// forward-auth endpoint on every path (Envoy ext_authz style).
	Listen   string
	Upstream string
	// AuthListen, if set, serves the forward-auth endpoint as well.
	AuthListen string
	// AdminListen serves /metrics, /healthz and /readyz.
	AdminListen string
	DataDir     string
	VerifierID  string
	Routes      []Route
	// QuotaPeriod is the aggregator's quota period: month (default) or day.
	QuotaPeriod string
	// AnonIPv6Prefix: see Config.AnonIPv6Prefix.
	AnonIPv6Prefix int
	// BlockValidKeys: see Config.BlockValidKeys.
	BlockValidKeys bool
	HTTP           HTTPConfig
	Emitter        EmitterConfig // Publisher, Partitions, Producer, DataDir are filled in
	// ShareRateLimits, if set, makes key rate limits global across the
	// verifiers of one bus (NATS or Kafka), reporting admissions this often
	// (see RateShare).
	ShareRateLimits time.Duration
	Bus             bus.Bus
	// Registry receives the metrics, served on AdminListen; nil: a
	// registry of its own. keymeter dev passes the one of every role.
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// OnListen, if set, is called with the bound addresses (tests).
	OnListen func(main, auth, admin net.Addr)
}

// Validate reports every problem of the configuration; it changes nothing.
func (c RunConfig) Validate() error {
	var errs []error
	if c.Bus == nil {
		errs = append(errs, errors.New("verifier: a bus is required"))
	}
	if c.Listen == "" && c.AuthListen == "" {
		errs = append(errs, errors.New("verifier: nothing to serve: set --listen (and --upstream for proxy mode) or --auth-listen"))
	}
	if (c.Listen != "" && c.Upstream == "") || c.AuthListen != "" {
		if c.HTTP.Front.Name == "" {
			errs = append(errs, fmt.Errorf("verifier: forward auth needs the proxy in front named: --front %s, or --front-method-header and --front-uri-header (the original request is read only from the headers that proxy sets)", strings.Join(FrontNames(), "|")))
		}
		if c.HTTP.QueryParam != "" && c.Upstream == "" {
			// The proxy forwards the original URI, key included: the
			// verifier cannot strip it, so the upstream would log keys.
			errs = append(errs, fmt.Errorf("verifier: --query-param %q is for proxy mode (--upstream) only: in forward auth the proxy passes the original URI, key included, to the upstream; send keys in Authorization or X-API-Key (next to --upstream, the --auth-listen endpoint ignores query-parameter keys)", c.HTTP.QueryParam))
		}
	}
	switch {
	case c.HTTP.ForwardedHeader == "", strings.EqualFold(c.HTTP.ForwardedHeader, HeaderXForwardedFor), strings.EqualFold(c.HTTP.ForwardedHeader, HeaderForwarded):
	default:
		errs = append(errs, fmt.Errorf("verifier: --forwarded-header %q: accepted values are %s, %s", c.HTTP.ForwardedHeader, HeaderXForwardedFor, HeaderForwarded))
	}
	if c.HTTP.BodyTimeout < 0 {
		errs = append(errs, fmt.Errorf("verifier: --body-timeout %s: must be positive", c.HTTP.BodyTimeout))
	}
	if c.HTTP.TunnelCheck < 0 {
		errs = append(errs, fmt.Errorf("verifier: --tunnel-check %s: must be positive", c.HTTP.TunnelCheck))
	}
	if c.Upstream != "" {
		u, err := url.Parse(c.Upstream)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("verifier: --upstream %q: want an http:// or https:// URL", c.Upstream))
		}
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("verifier: --data-dir is required (the event spool lives there)"))
	}
	return errors.Join(errs...)
}

// withDefaults is c with the verifier id (verifier-<hostname>) and the
// logger (slog.Default()) filled in.
func (c RunConfig) withDefaults() RunConfig {
	if c.VerifierID == "" {
		h, _ := os.Hostname()
		c.VerifierID = "verifier-" + h
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Run serves until ctx ends, then shuts down in order: stop taking
// requests, flush the event batches (spooling what the bus does not take),
// stop watching keys. The caller closes the bus.
func Run(ctx context.Context, cfg RunConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger.With("role", "verifier", "verifier_id", cfg.VerifierID)
	r, err := assemble(cfg, log)
	if err != nil {
		return err
	}

	bg, bgctx := errgroup.WithContext(context.Background())
	watchCtx, stopWatch := context.WithCancel(bgctx)
	defer stopWatch()
	r.watch(watchCtx, bg, cfg.Bus, log)

	servers, addrs, startErr := r.listen(cfg, log)
	if startErr == nil && cfg.OnListen != nil {
		cfg.OnListen(addrs[0], addrs[1], addrs[2])
	}
	if startErr == nil {
		select {
		case <-ctx.Done():
		case <-bgctx.Done():
		}
	}

	log.Info("verifier stopping: closing listeners")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, hs := range servers {
		_ = hs.Shutdown(sctx)
	}
	// Shutdown does not wait for upgraded (WebSocket) connections: close
	// them, so that their events are emitted before the flush.
	if n := r.srv.tunnels.closeAll(sctx); n > 0 {
		log.Info("verifier stopping: closed upgraded connections", "count", n)
	}
	log.Info("verifier stopping: flushing usage events")
	emErr := r.em.Close(sctx)
	stopWatch()
	_ = bg.Wait()
	st := r.em.Stats()
	log.Info("verifier stopped", "events_emitted", st.Emitted, "events_published", st.Published,
		"events_spooled", st.Spooled, "events_dropped", st.Dropped, "spool_events", st.SpoolEvents)
	return errors.Join(startErr, emErr)
}

// role is a verifier's parts, as Run assembles them.
type role struct {
	tbl    *keys.Table
	blocks *BlockList
	em     *Emitter
	m      *Metrics
	srv    *Server
	share  *RateShare // nil unless rate limits are shared
}

// assemble builds the key table, the verifier, the emitter, the metrics and
// the HTTP server of cfg.
func assemble(cfg RunConfig, log *slog.Logger) (_ *role, err error) {
	r := &role{blocks: &BlockList{}}
	if r.tbl, err = keys.NewTable(keys.TableConfig{}, keys.WithLogger(log)); err != nil {
		return nil, err
	}
	v, err := New(Config{Table: r.tbl, Routes: cfg.Routes, Blocks: r.blocks, QuotaPeriod: cfg.QuotaPeriod, BlockValidKeys: cfg.BlockValidKeys, AnonIPv6Prefix: cfg.AnonIPv6Prefix})
	if err != nil {
		return nil, err
	}
	ecfg := cfg.Emitter
	ecfg.Publisher, ecfg.Partitions, ecfg.Producer, ecfg.DataDir = cfg.Bus.Publisher(), cfg.Bus.Partitions(), cfg.VerifierID, cfg.DataDir
	if ecfg.Logger == nil {
		ecfg.Logger = log
	}
	if r.em, err = NewEmitter(ecfg); err != nil {
		return nil, err
	}
	defer func() {
		// The emitter holds the data directory's lock and its log: a
		// role that fails to assemble gives both back.
		if err != nil {
			_ = r.em.Close(context.Background())
		}
	}()
	if r.m, err = NewMetrics(cfg.Registry, r.tbl, r.em); err != nil {
		return nil, err
	}
	hcfg := cfg.HTTP
	hcfg.VerifierID, hcfg.Logger = cfg.VerifierID, log
	r.srv = NewServer(v, r.em, r.m, hcfg)
	if cfg.ShareRateLimits > 0 {
		tr := cfg.Bus.RateTransport()
		if tr == nil {
			return nil, errors.New("verifier: --share-rate-limits: this bus cannot carry rate-limit reports")
		}
		if r.share, err = NewRateShare(r.tbl, tr, cfg.VerifierID, cfg.ShareRateLimits, log); err != nil {
			return nil, err
		}
		if err := r.share.register(r.m.Registry); err != nil {
			return nil, err
		}
		r.srv.ShareRates(r.share)
	}
	return r, nil
}

// watch starts, in bg, following the keys, the rate shares and the
// detection decisions until ctx ends.
func (r *role) watch(ctx context.Context, bg *errgroup.Group, b bus.Bus, log *slog.Logger) {
	bg.Go(func() error { return r.tbl.Run(ctx, b) })
	// While the snapshot loads, the live heap only grows: collect more
	// often than the default GOGC=100 so that the heap does not overshoot
	// to twice the table's size. Then hand the load's leftovers back once,
	// so a million-key verifier settles at the table's size.
	gogc := debug.SetGCPercent(25)
	bg.Go(func() error {
		select {
		case <-r.tbl.Ready():
		case <-ctx.Done():
		}
		debug.SetGCPercent(gogc)
		debug.FreeOSMemory()
		return nil
	})
	if r.share != nil {
		bg.Go(func() error { return r.share.Run(ctx) })
	}
	bg.Go(func() error {
		if err := r.blocks.Run(ctx, b, log); err != nil && ctx.Err() == nil {
			log.Warn("not following detection decisions: blocked addresses will not apply", "err", err)
		}
		return nil
	})
}

// listen serves the main, forward-auth and admin handlers on the addresses
// of cfg that are set. It returns the servers started (also on error) and
// the addresses they listen on.
func (r *role) listen(cfg RunConfig, log *slog.Logger) ([]*http.Server, [3]net.Addr, error) {
	var servers []*http.Server
	var addrs [3]net.Addr
	var mainH http.Handler
	if cfg.Upstream != "" {
		u, _ := url.Parse(cfg.Upstream)
		mainH = r.srv.Proxy(u)
	} else {
		mainH = r.srv.ForwardAuth("")
	}
	admin := http.NewServeMux()
	r.srv.Health(admin, promhttp.HandlerFor(r.m.Registry, promhttp.HandlerOpts{}))
	for i, s := range []struct {
		addr string
		h    http.Handler
	}{{cfg.Listen, mainH}, {cfg.AuthListen, r.srv.ForwardAuth("")}, {cfg.AdminListen, NoBody(r.em.ReadyGate(admin))}} {
		if s.addr == "" {
			continue
		}
		hs, addr, err := serve(s.addr, s.h, log)
		if err != nil {
			return servers, addrs, err
		}
		servers, addrs[i] = append(servers, hs), addr
	}
	return servers, addrs, nil
}

// serve serves h on addr in a goroutine of its own.
func serve(addr string, h http.Handler, log *slog.Logger) (*http.Server, net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("verifier: listen %s: %w", addr, err)
	}
	// No ReadTimeout: it would stay armed while the handler waits for
	// the upstream and cancel slow answers. Bodies are bounded per
	// request instead (HTTPConfig.BodyTimeout), and refusals never
	// read them.
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: maxHeaderBytes, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "addr", addr, "err", err)
		}
	}()
	log.Info("listening", "addr", ln.Addr().String())
	return hs, ln.Addr(), nil
}
