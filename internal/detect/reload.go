package detect

import (
	"context"
	"io/fs"
	"log/slog"
	"time"
)

// Reloader loads the rule set under Paths (or in FS) and hands it to Swap whenever
// the files change. A set that does not load (a bad file anywhere) is
// refused as a whole: the set in force keeps running and the error is
// logged and counted.
type Reloader struct {
	Paths    []string
	FS       fs.FS // when set, the rules are every rule file in it and Paths is ignored (see Source)
	Options  CompileOptions
	Swap     func(*RuleSet) // e.g. Engine.Swap, or a loop over per-partition engines
	Interval time.Duration  // polling period; default 2s
	Logger   *slog.Logger
	Metrics  *Metrics

	last string // fingerprint of the files last loaded successfully
}

// Reload loads the rules if the files changed since the last successful
// load. It reports whether a new set was swapped in.
func (r *Reloader) Reload() (bool, error) {
	src := Source{Paths: r.Paths, FS: r.FS}
	fp, err := src.fingerprint()
	if err != nil {
		r.failed(err)
		return false, err
	}
	if fp == r.last {
		return false, nil
	}
	set, err := src.Load(r.Options)
	if err != nil {
		r.failed(err)
		return false, err
	}
	r.Swap(set)
	r.last = fp
	if r.Metrics != nil {
		r.Metrics.Reloads.WithLabelValues("ok").Inc()
	}
	r.logger().Info("detect: rules loaded", "rules", set.Len(), "from", src.String())
	return true, nil
}

func (r *Reloader) failed(err error) {
	if r.Metrics != nil {
		r.Metrics.Reloads.WithLabelValues("error").Inc()
	}
	r.logger().Error("detect: rules refused; the running set stays", "err", err)
}

func (r *Reloader) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// Run polls until ctx is done. The first load happens at once; its error
// is returned so that a detector does not start without rules.
func (r *Reloader) Run(ctx context.Context) error {
	if _, err := r.Reload(); err != nil && r.last == "" {
		return err
	}
	iv := r.Interval
	if iv <= 0 {
		iv = 2 * time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			_, _ = r.Reload()
		}
	}
}
