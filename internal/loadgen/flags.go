package loadgen

import (
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Bind defines keymeter loadgen's flags on fs, writing into c.
func (c *RunConfig) Bind(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.Gen.Scenarios, "scenario", []string{"normal"}, "scenarios to mix: "+strings.Join(Scenarios, ", "))
	fs.Float64Var(&c.Gen.Rate, "rate", 200, "normal requests per second")
	fs.DurationVar(&c.Gen.Duration, "duration", time.Minute, "how long the traffic lasts")
	fs.IntVar(&c.Gen.MaxRequests, "max-requests", 0, "bound on the total (default rate*duration*3+10000)")
	fs.Uint64Var(&c.Gen.Seed, "seed", 1, "random seed: the same seed gives the same traffic")
	fs.DurationVar(&c.Gen.AttackEvery, "attack-every", 20*time.Second, "start an attack this often")
	fs.DurationVar(&c.Gen.AttackAfter, "attack-after", 5*time.Second, "first attack after this long")
	fs.StringVar(&c.Target, "target", "", "verifier base URL for HTTP mode")
	fs.StringVar(&c.Out, "out", "", "NDJSON file of usage events to write instead of sending")
	fs.StringVar(&c.KeysFile, "keys-file", "", "CSV lines key_id,project,secret")
	fs.IntVar(&c.Synthetic, "synthetic-keys", 0, "invent this many key ids (NDJSON mode)")
	fs.StringVar(&c.CountryHeader, "country-header", "CF-IPCountry", "header carrying the client's country")
	fs.IntVar(&c.Workers, "workers", 32, "concurrent HTTP requests")
	fs.StringVar(&c.Start, "start", "", "event time of the first event in NDJSON mode (default now; --eval: a minute of November 2026 drawn from --seed)")
	fs.BoolVar(&c.Eval, "eval", false, "write a labelled evaluation set (--out, --labels-out)")
	fs.Float64Var(&c.Days, "days", 3, "--eval: days of traffic")
	fs.Float64Var(&c.EvalCfg.Scale, "scale", 1, "--eval: multiplies the benign populations")
	fs.IntVar(&c.EvalCfg.Attacks, "attacks", 0, "--eval: attacks per scenario (0: 1 or 2, from the seed)")
	fs.IntVar(&c.EvalCfg.Surge, "surge", 0, "--eval: a day when every key runs at several times its usual volume: 0 on half the seeds, 1 always, -1 never")
	fs.DurationVar(&c.EvalCfg.AttackAfter, "attack-after-eval", 0, "--eval: no attack before this much traffic (default 24h or a third of --days)")
	fs.StringVar(&c.LabelsOut, "labels-out", "", "--eval: NDJSON file of attack labels")
	fs.StringVar(&c.KeysOut, "keys-out", "", "--eval: NDJSON file of the keys with their kinds")
}
