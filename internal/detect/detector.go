package detect

import (
	"context"
	"errors"
	"runtime"
	"time"
)

// DetectorConfig configures the detector role: rules on disk, reloaded
// when they change, run on Workers cores.
type DetectorConfig struct {
	RulesPaths     []string      // files or directories of rule files
	Workers        int           // engines the rules are split over; default GOMAXPROCS
	ReloadInterval time.Duration // polling period; default 2s
	Compile        CompileOptions
	Engine         Config // sink, baseline source, allowlist, breaker, metrics, logger
}

// Validate checks the configuration.
func (c *DetectorConfig) Validate() error {
	if len(c.RulesPaths) == 0 {
		return errors.New("detect: DetectorConfig.RulesPaths is empty (a directory of rule files, e.g. rules/)")
	}
	return c.Engine.Validate()
}

// Detector is the detector role's engine: a Parallel engine whose rule set
// follows the rule files. Feed it with ProcessBatch (or Submit) from one
// goroutine, in event-time order per partition.
type Detector struct {
	*Parallel
	reloader *Reloader
}

// NewDetector loads the rules (refusing to start without a valid set) and
// starts the engines.
func NewDetector(cfg DetectorConfig) (*Detector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	p, err := NewParallel(cfg.Engine, nil, cfg.Workers)
	if err != nil {
		return nil, err
	}
	d := &Detector{Parallel: p, reloader: &Reloader{Paths: cfg.RulesPaths, Options: cfg.Compile, Swap: p.Swap,
		Interval: cfg.ReloadInterval, Logger: cfg.Engine.Logger, Metrics: cfg.Engine.Metrics}}
	if _, err := d.reloader.Reload(); err != nil {
		p.Close()
		return nil, err
	}
	return d, nil
}

// Run reloads the rules when the files change and publishes the counters
// (Stats, metrics) every second, until ctx is done. A bad set is logged
// and counted; the running set stays.
func (d *Detector) Run(ctx context.Context) error {
	iv := d.reloader.Interval
	if iv <= 0 {
		iv = 2 * time.Second
	}
	reload := time.NewTicker(iv)
	defer reload.Stop()
	flush := time.NewTicker(time.Second)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-reload.C:
			_, _ = d.reloader.Reload()
		case <-flush.C:
			d.Flush()
		}
	}
}

// Reload checks the files now.
func (d *Detector) Reload() (bool, error) { return d.reloader.Reload() }
