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

	"github.com/nats-io/nats.go"
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
	// verifiers of one bus (NATS), reporting admissions this often (see
	// RateShare).
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
	tbl, err := keys.NewTable(keys.TableConfig{}, keys.WithLogger(log))
	if err != nil {
		return err
	}
	blocks := &BlockList{}
	v, err := New(Config{Table: tbl, Routes: cfg.Routes, Blocks: blocks, QuotaPeriod: cfg.QuotaPeriod, BlockValidKeys: cfg.BlockValidKeys, AnonIPv6Prefix: cfg.AnonIPv6Prefix})
	if err != nil {
		return err
	}
	ecfg := cfg.Emitter
	ecfg.Publisher, ecfg.Partitions, ecfg.Producer, ecfg.DataDir = cfg.Bus.Publisher(), cfg.Bus.Partitions(), cfg.VerifierID, cfg.DataDir
	if ecfg.Logger == nil {
		ecfg.Logger = log
	}
	em, err := NewEmitter(ecfg)
	if err != nil {
		return err
	}
	m, err := NewMetrics(cfg.Registry, tbl, em)
	if err != nil {
		return err
	}
	hcfg := cfg.HTTP
	hcfg.VerifierID, hcfg.Logger = cfg.VerifierID, log
	srv := NewServer(v, em, m, hcfg)
	var share *RateShare
	if cfg.ShareRateLimits > 0 {
		nb, ok := cfg.Bus.(interface {
			Conn() *nats.Conn
			Prefix() string
		})
		if !ok {
			return errors.New("verifier: --share-rate-limits needs the NATS bus")
		}
		if share, err = NewRateShare(tbl, NATSRateTransport(nb.Conn(), nb.Prefix()), cfg.VerifierID, cfg.ShareRateLimits, log); err != nil {
			return err
		}
		srv.ShareRates(share)
	}

	bg, bgctx := errgroup.WithContext(context.Background())
	watchCtx, stopWatch := context.WithCancel(bgctx)
	defer stopWatch()
	bg.Go(func() error { return tbl.Run(watchCtx, cfg.Bus) })
	// While the snapshot loads, the live heap only grows: collect more
	// often than the default GOGC=100 so that the heap does not overshoot
	// to twice the table's size. Then hand the load's leftovers back once,
	// so a million-key verifier settles at the table's size.
	gogc := debug.SetGCPercent(25)
	bg.Go(func() error {
		select {
		case <-tbl.Ready():
		case <-watchCtx.Done():
		}
		debug.SetGCPercent(gogc)
		debug.FreeOSMemory()
		return nil
	})
	if share != nil {
		bg.Go(func() error { return share.Run(watchCtx) })
	}
	bg.Go(func() error {
		if err := blocks.Run(watchCtx, cfg.Bus, log); err != nil && watchCtx.Err() == nil {
			log.Warn("not following detection decisions: blocked addresses will not apply", "err", err)
		}
		return nil
	})

	var servers []*http.Server
	var addrs [3]net.Addr
	serve := func(i int, addr string, h http.Handler) error {
		if addr == "" {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("verifier: listen %s: %w", addr, err)
		}
		addrs[i] = ln.Addr()
		// No ReadTimeout: it would stay armed while the handler waits for
		// the upstream and cancel slow answers. Bodies are bounded per
		// request instead (HTTPConfig.BodyTimeout), and refusals never
		// read them.
		hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		servers = append(servers, hs)
		go func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server stopped", "addr", addr, "err", err)
			}
		}()
		log.Info("listening", "addr", ln.Addr().String())
		return nil
	}
	var mainH http.Handler
	if cfg.Upstream != "" {
		u, _ := url.Parse(cfg.Upstream)
		mainH = srv.Proxy(u)
	} else {
		mainH = srv.ForwardAuth("")
	}
	admin := http.NewServeMux()
	srv.Health(admin, promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	adminH := NoBody(admin)
	var startErr error
	for i, s := range []struct {
		addr string
		h    http.Handler
	}{{cfg.Listen, mainH}, {cfg.AuthListen, srv.ForwardAuth("")}, {cfg.AdminListen, adminH}} {
		if err := serve(i, s.addr, s.h); err != nil {
			startErr = err
			break
		}
	}
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
	log.Info("verifier stopping: flushing usage events")
	emErr := em.Close(sctx)
	stopWatch()
	_ = bg.Wait()
	st := em.Stats()
	log.Info("verifier stopped", "events_emitted", st.Emitted, "events_published", st.Published,
		"events_spooled", st.Spooled, "events_dropped", st.Dropped, "spool_events", st.SpoolEvents)
	return errors.Join(startErr, emErr)
}
