package api

import (
	"fmt"

	"github.com/spf13/pflag"
)

// Flags are keymeter api's own flags (the bus, store and leak flags are
// their packages').
type Flags struct {
	Listen, AdminListen string
	Tokens              []string // role:sha256hex
}

// Bind defines --listen, --admin-listen and --admin-token on fs.
func (f *Flags) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.Listen, "listen", "127.0.0.1:8081", "address of the API")
	fs.StringVar(&f.AdminListen, "admin-listen", "127.0.0.1:9467", "address of /metrics, /healthz, /readyz (empty to disable)")
	fs.StringSliceVar(&f.Tokens, "admin-token", nil, "admin token hashes, role:sha256hex (role admin or read); repeatable")
}

// RunConfig is the RunConfig of the flags, with the tokens parsed; at
// least one is required.
func (f *Flags) RunConfig() (RunConfig, error) {
	cfg := RunConfig{Listen: f.Listen, AdminListen: f.AdminListen}
	for _, s := range f.Tokens {
		t, err := ParseToken(s)
		if err != nil {
			return cfg, fmt.Errorf("--admin-token: %w", err)
		}
		cfg.Tokens = append(cfg.Tokens, t)
	}
	if len(cfg.Tokens) == 0 {
		return cfg, fmt.Errorf("--admin-token is required: role:sha256hex, e.g. admin:$(printf %%s \"$TOKEN\" | sha256sum | cut -d' ' -f1)")
	}
	return cfg, nil
}
