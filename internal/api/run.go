package api

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/billing"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/detector"
	"github.com/keymeter/keymeter/internal/httpserve"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/leaks"
	"github.com/keymeter/keymeter/internal/store"
)

// RunConfig configures the API role.
type RunConfig struct {
	// Listen is the API's address; AdminListen, if set, serves /metrics,
	// /healthz and /readyz.
	Listen, AdminListen string
	Tokens              []Token
	Bus                 bus.Bus
	// Store, if set, answers usage, logs, decisions and billing; without
	// one the API manages keys only (the others answer 503).
	Store *store.DB
	// Table and Keys, if set, are a key table the caller runs and its key
	// service (keymeter dev shares them); if nil, Run makes and runs its own.
	Table *keys.Table
	Keys  *keys.Service
	// Leaks is the leak-report policy and reporters' public keys; Run fills
	// in the key table, service, bus and store.
	Leaks leaks.Config
	Rules RuleLister
	// Registry receives the API's metrics; nil: a registry of its own.
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// OnListen, if set, is called with the bound addresses (admin is nil
	// without AdminListen).
	OnListen func(api, admin net.Addr)
}

// Validate reports every problem of the configuration; it changes nothing.
func (c *RunConfig) Validate() error {
	var errs []error
	if c.Bus == nil {
		errs = append(errs, errors.New("api: a bus is required"))
	}
	if c.Listen == "" {
		errs = append(errs, errors.New("api: --listen is required"))
	}
	if len(c.Tokens) == 0 {
		errs = append(errs, errors.New("api: at least one admin token hash is required (--admin-token role:sha256hex)"))
	}
	if (c.Table == nil) != (c.Keys == nil) {
		errs = append(errs, errors.New("api: a shared key table needs its key service, and the other way round"))
	}
	return errors.Join(errs...)
}

// Run serves the API until ctx ends.
func Run(ctx context.Context, cfg RunConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cmp.Or(cfg.Logger, slog.Default())
	reg := cfg.Registry
	if reg == nil {
		reg = httpserve.NewRegistry() // not cmp.Or: that would build one every time
	}
	eg, ectx := errgroup.WithContext(ctx)
	table, svc := cfg.Table, cfg.Keys
	if table == nil {
		var err error
		if table, svc, err = keys.NewStateService(cfg.Bus, keys.WithLogger(log)); err != nil {
			return err
		}
		eg.Go(func() error { return table.Run(ectx, cfg.Bus) })
	}
	acfg, err := cfg.apiConfig(table, svc, log)
	if err != nil {
		return err
	}
	acfg.Console.Done = ectx.Done() // live console streams end at shutdown
	srv, err := New(acfg, WithLogger(log))
	if err != nil {
		return err
	}
	h, err := httpserve.Instrument(reg, "api", srv)
	if err != nil {
		return err
	}
	ln, err := httpserve.Listen(cfg.Listen, "--listen")
	if err != nil {
		return err
	}
	var adminAddr net.Addr
	if cfg.AdminListen != "" {
		aln, err := httpserve.Listen(cfg.AdminListen, "--admin-listen")
		if err != nil {
			ln.Close()
			return err
		}
		adminAddr = aln.Addr()
		eg.Go(func() error { return httpserve.Serve(ectx, aln, httpserve.Admin(reg, table.Loaded), log) })
	}
	log.Info("api listening", "addr", ln.Addr().String())
	if cfg.OnListen != nil {
		cfg.OnListen(ln.Addr(), adminAddr)
	}
	eg.Go(func() error { return httpserve.Serve(ectx, ln, h, log) })
	if acfg.Decision != nil {
		// Leak decisions of APIs without a store reach this one's
		// /v1/decisions through the bus.
		eg.Go(func() error { return leaks.Recorder(ectx, cfg.Bus, acfg.Decision, log) })
	}
	if err := eg.Wait(); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// apiConfig is the Server's configuration from the role's.
func (cfg *RunConfig) apiConfig(table *keys.Table, svc *keys.Service, log *slog.Logger) (Config, error) {
	acfg := Config{Tokens: cfg.Tokens, Keys: svc, KeyTable: table, Ready: table.Loaded, Rules: cfg.Rules}
	if cfg.Bus != nil {
		// Rule-mode overrides go on the decisions log for every detector;
		// with the detector's engine at hand, unknown rule ids are refused.
		ms := detector.ModeSwitch{Bus: cfg.Bus}
		if k, ok := cfg.Rules.(interface{ HasRule(string) bool }); ok {
			ms.Known = k.HasRule
		}
		acfg.RuleModes = ms
	}
	acfg.Console.Bus = cfg.Bus
	if rs, ok := cfg.Rules.(interface{ RuleSet() *detect.RuleSet }); ok {
		acfg.Console.Rules = rs.RuleSet
	}
	lc := cfg.Leaks
	lc.Table, lc.Keys, lc.Decisions = table, svc, cfg.Bus
	if cfg.Store != nil {
		st := cfg.Store
		acfg.Usage, acfg.Logs, acfg.Decision, acfg.Billing = st, st, st, &billing.Exporter{Store: st}
		acfg.Retention = st.Retention
		acfg.Audit = st
		acfg.Console.Store = st
		lc.Store = st
	}
	lh, err := leaks.New(lc, leaks.WithLogger(log))
	if err != nil {
		return acfg, err
	}
	acfg.Leaks = lh
	if acfg.Events, err = NewBusSink(cfg.Bus.Publisher()); err != nil {
		return acfg, err
	}
	return acfg, nil
}
