package verifier

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/keys"
)

// Settings are the parts of a RunConfig that people give as text (keymeter
// verifier's flags): Apply parses them into the config, naming the flag of
// any bad value.
type Settings struct {
	Routes         []string  // --route
	TrustedProxies []string  // --trusted-proxy CIDRs
	Front          string    // --front
	FrontHeaders   [3]string // --front-{method,uri,host}-header
	MaxSpoolMB     int64
	QueueSize      int
	MaxBatch       int
	FlushInterval  time.Duration
	GeoCountryDB   string // --geoip-country-db
	GeoASNDB       string // --geoip-asn-db
	MemoryLimitMB  int64  // --memory-limit-mb; 0: unset
}

// Apply returns cfg with the settings parsed into it. A front is parsed
// only when forward auth is served (--listen without --upstream, or
// --auth-listen) or a front flag is given.
func (s Settings) Apply(cfg RunConfig) (RunConfig, error) {
	var err error
	if cfg.Routes, err = ParseRoutes(s.Routes); err != nil {
		return cfg, fmt.Errorf("--route: %w", err)
	}
	if (cfg.Listen != "" && cfg.Upstream == "") || cfg.AuthListen != "" || s.Front != "" || s.FrontHeaders != [3]string{} {
		if cfg.HTTP.Front, err = ParseFront(s.Front, s.FrontHeaders[0], s.FrontHeaders[1], s.FrontHeaders[2]); err != nil {
			return cfg, err
		}
	}
	for _, c := range s.TrustedProxies {
		p, err := keys.ParseCIDR(c)
		if err != nil {
			return cfg, fmt.Errorf("--trusted-proxy: %w", err)
		}
		cfg.HTTP.TrustedProxies = append(cfg.HTTP.TrustedProxies, p)
	}
	cfg.Emitter.MaxSpoolBytes = s.MaxSpoolMB << 20
	cfg.Emitter.QueueSize, cfg.Emitter.MaxBatch, cfg.Emitter.FlushInterval = s.QueueSize, s.MaxBatch, s.FlushInterval
	return cfg, nil
}

// RunProcess runs the verifier as the process keymeter verifier: the
// settings applied to cfg, the Go memory limit set, the GeoIP databases and
// then the bus (openBus, on cfg.DataDir, created) opened. Shutdown order:
// Run stops intake and flushes the batches; then the bus is drained and
// closed, with 10 s of grace.
func (s Settings) RunProcess(ctx context.Context, cfg RunConfig, openBus func(ctx context.Context, dataDir string) (bus.Bus, error)) error {
	cfg, err := s.Apply(cfg)
	if err != nil {
		return err
	}
	if s.MemoryLimitMB > 0 {
		debug.SetMemoryLimit(s.MemoryLimitMB << 20)
	}
	if s.GeoCountryDB != "" || s.GeoASNDB != "" {
		geo, err := OpenGeo(s.GeoCountryDB, s.GeoASNDB)
		if err != nil {
			return err
		}
		defer geo.Close()
		cfg.HTTP.Geo = geo
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	b, err := openBus(ctx, cfg.DataDir)
	if err != nil {
		return err
	}
	cfg.Bus = b
	runErr := Run(ctx, cfg)
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Close(cctx); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}
