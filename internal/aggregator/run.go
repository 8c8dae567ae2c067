package aggregator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/httpserve"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/store"
)

// RunConfig configures the aggregator role: the aggregator, its quota
// tracker and the key table the quotas read.
type RunConfig struct {
	Aggregator Config
	Quota      QuotaConfig // Keys, KeyLog and Usage are filled in
	Bus        bus.Bus
	Store      *store.DB
	// Migrate applies pending store migrations at start.
	Migrate bool
	// Table, if set, is a key table (keeping state) the caller runs;
	// if nil, Run makes and runs its own.
	Table *keys.Table
	// MemoryLimit is the Go runtime's soft memory limit Run sets (the
	// zero value: none; the flag's default: auto).
	MemoryLimit MemoryLimit
	// AdminListen, if set, serves /metrics, /healthz and /readyz.
	AdminListen string
	// Registry receives the metrics; nil: a registry of its own.
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// Started, if set, is called with the aggregator before it runs
	// (keymeter dev reads its Stats).
	Started func(*Aggregator)
	// OnListen, if set, is called with the admin address.
	OnListen func(admin net.Addr)
}

// Validate reports every problem of the configuration; it changes nothing.
func (c *RunConfig) Validate() error {
	errs := []error{c.Aggregator.Validate(), c.Quota.Validate()}
	if c.Bus == nil {
		errs = append(errs, errors.New("aggregator: a bus is required"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("aggregator: a store is required"))
	}
	return errors.Join(errs...)
}

// Run runs the aggregator role until ctx ends or, in drain mode
// (StopWhenIdle), until everything is stored. The last flush is done when
// it returns; the caller closes the store, then the bus.
func Run(ctx context.Context, cfg RunConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cmp.Or(cfg.Logger, slog.Default())
	defer cfg.MemoryLimit.Apply(cfg.Aggregator.LargestBlock(), log)()
	reg := cfg.Registry
	if reg == nil {
		reg = httpserve.NewRegistry() // not cmp.Or: that would build one every time
	}
	if cfg.Migrate {
		if _, err := cfg.Store.Migrate(ctx); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	rest, stopRest := context.WithCancel(ctx)
	defer stopRest()
	eg, ectx := errgroup.WithContext(rest)
	table := cfg.Table
	if table == nil {
		var err error
		if table, err = keys.NewTable(keys.TableConfig{KeepState: true}, keys.WithLogger(log)); err != nil {
			return err
		}
		eg.Go(func() error { return table.Run(ectx, cfg.Bus) })
	}
	qc := cfg.Quota
	qc.Keys, qc.KeyLog, qc.Usage = table, cfg.Bus, cfg.Store
	quotas, err := NewQuotas(qc, WithQuotaLogger(log))
	if err != nil {
		return err
	}
	agg, err := New(cfg.Aggregator, cfg.Bus, cfg.Store, WithLogger(log), WithObserver(quotas), WithRegisterer(reg))
	if err != nil {
		return err
	}
	if cfg.AdminListen != "" {
		ln, err := httpserve.Listen(cfg.AdminListen, "--admin-listen")
		if err != nil {
			return err
		}
		if cfg.OnListen != nil {
			cfg.OnListen(ln.Addr())
		}
		eg.Go(func() error { return httpserve.Serve(ectx, ln, httpserve.Admin(reg, table.Loaded), log) })
	}
	if cfg.Started != nil {
		cfg.Started(agg)
	}
	eg.Go(func() error {
		// Quotas need the key table before the first block.
		select {
		case <-table.Ready():
		case <-ectx.Done():
			return nil
		}
		err := agg.Run(ectx)
		stopRest() // the aggregator is done: stop the rest
		return err
	})
	err = eg.Wait()
	s := agg.Stats()
	log.Info("aggregator stopped", "events", s.Events, "blocks", s.Blocks, "dead_lettered", s.DeadLettered, "replayed_intents", s.Replayed)
	if err != nil && ctx.Err() != nil {
		return nil
	}
	return err
}
