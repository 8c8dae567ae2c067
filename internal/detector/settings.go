package detector

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/store"
)

// Settings are the detection role's settings as keymeter detector's (and
// keymeter dev's) flags give them; Config joins them with what the process
// opened.
type Settings struct {
	Rules      []string
	AllowKeys  []string
	AllowCIDRs []string
	MaxRevokes int // per rule and hour; negative: off
	MaxGlobal  int // across rules, per hour; negative: off
	Reload     time.Duration
	Lookback   time.Duration
	WarmStart  time.Duration
	Maturity   time.Duration
	Seasonal   time.Duration
	Grace      time.Duration
	Group      string
}

// Config is the role's RunConfig. A store that keeps history (*store.DB)
// also warm-starts the profiles; a *keys.Service also tells rules each
// key's kind (key_kind).
func (s Settings) Config(b Bus, st store.Store, ka KeyActions, reg prometheus.Registerer, log *slog.Logger) RunConfig {
	cfg := RunConfig{Rules: s.Rules, ReloadInterval: s.Reload, AllowKeys: s.AllowKeys, AllowCIDRs: s.AllowCIDRs,
		MaxRevocationsPerHour: s.MaxRevokes, MaxRevocationsGlobal: s.MaxGlobal, Group: s.Group, BaselineLookback: s.Lookback,
		ProfileWarmStart: s.WarmStart, Profiles: detect.ProfileConfig{Maturity: s.Maturity, Seasonal: s.Seasonal, NoveltyGrace: s.Grace},
		Bus: b, Store: st, Keys: ka, Registerer: reg, Logger: log}
	if h, ok := st.(History); ok {
		cfg.History = h
	}
	if svc, ok := ka.(*keys.Service); ok && svc != nil {
		cfg.KeyKind = svc.Kind // rules read key_kind from the key table
	}
	return cfg
}
