package detector

import (
	"time"

	"github.com/spf13/pflag"
)

// Bind defines the detection role's flags (keymeter detector, dev,
// bench revoke-e2e) on fs, writing into s.
func (s *Settings) Bind(fs *pflag.FlagSet) {
	fs.StringSliceVar(&s.Rules, "rules", nil, "rule files or directories, hot-reloaded (default: ./rules if it exists, else the starter rules built into the binary)")
	fs.StringSliceVar(&s.AllowKeys, "allow-key", nil, "key ids rules never act on (decisions recorded as dry-run)")
	fs.StringSliceVar(&s.AllowCIDRs, "allow-cidr", nil, "client networks rules never act on")
	fs.IntVar(&s.MaxRevokes, "max-revocations-per-hour", 10, "circuit breaker per rule: distinct keys suspended or revoked per hour before the rule's suspensions and revocations turn to dry-run (negative: off)")
	fs.IntVar(&s.MaxGlobal, "max-revocations-global", 20, "circuit breaker across rules: distinct keys per hour (negative: off)")
	fs.DurationVar(&s.Reload, "reload-interval", 2*time.Second, "how often rule files are checked for changes")
	fs.DurationVar(&s.Lookback, "baseline-lookback", 7*24*time.Hour, "history the per-key baselines are computed over")
	fs.DurationVar(&s.WarmStart, "profile-warm-start", 24*time.Hour, "stored history replayed into the key profiles at start, decisions off (negative: none)")
	fs.DurationVar(&s.Maturity, "profile-maturity", 0, "history a key or network needs before spread and novelty rules may act on it (0: 12h)")
	fs.DurationVar(&s.Seasonal, "profile-seasonal", 24*time.Hour, "history a key needs before volume rules compare it with its usual hour of the day")
	fs.DurationVar(&s.Grace, "profile-novelty-grace", time.Hour, "how long a country, ASN or network stays new for a key after it was first seen")
	fs.StringVar(&s.Group, "detector-group", "detector", "consumer group of the detector")
}

// BindDemo defines the flags as Bind does, with the profiles' learning
// shortened for keymeter dev, whose demo keys are seconds old when the demo
// attacks start: mature after 5s, countries and networks established after
// 5s. A production detector keeps 12h and 1h. Seasonality keeps its day:
// without a full hour seen, volume rules would take any steady key for a
// spike.
func (s *Settings) BindDemo(fs *pflag.FlagSet) {
	s.Bind(fs)
	for name, v := range map[string]string{"profile-maturity": "5s", "profile-novelty-grace": "5s"} {
		fl := fs.Lookup(name)
		fl.DefValue = v
		_ = fl.Value.Set(v)
	}
}
