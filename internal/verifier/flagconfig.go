package verifier

import (
	"fmt"
	"time"

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
