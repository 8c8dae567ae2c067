package main

import (
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/loadgen"
)

func init() { register(newLoadgenCmd) }

func newLoadgenCmd(g *globals) *cobra.Command {
	o := &loadgen.RunConfig{Stdout: os.Stdout, Stderr: os.Stderr}
	c := &cobra.Command{
		Use:   "loadgen",
		Short: "Generate normal traffic and attacks against a verifier, or as an NDJSON file of events",
		Long: `Scenarios: ` + strings.Join(loadgen.Scenarios, ", ") + `. "normal" runs all the time;
attack scenarios take turns every --attack-every. The same --seed gives the same
traffic. Traffic is bounded by --duration and --max-requests.

HTTP mode (--target) needs real keys: --keys-file with lines "key_id,project,secret"
(keymeter dev writes one to <data-dir>/demo-keys.csv). NDJSON mode (--out) needs no
secrets: --synthetic-keys N invents key ids.

Evaluation mode (--eval) writes a labelled evaluation set instead: --days of
benign traffic with the hard negatives of real APIs (global mobile-SDK keys,
browser keys behind CDNs, regional web keys, nightly batch bursts, CI runners,
uptime probes, travelling developers, corporate NAT) and the attacks
(` + strings.Join(loadgen.EvalScenarios, ", ") + `), events to --out,
one label per attack to --labels-out (see "Detection evaluation" in the README),
and the keys with their kinds to --keys-out. Populations, countries, rates,
timing and attacks are drawn from --seed.`,
		Example: `  keymeter loadgen --target http://127.0.0.1:8080 --keys-file data/demo-keys.csv --scenario normal,geo-shift --rate 200 --duration 1m
  keymeter loadgen --out events.ndjson --synthetic-keys 50 --scenario normal,anon-burst,leaked-key --duration 10m --seed 42
  keymeter loadgen --eval --days 3 --seed 7 --out eval.ndjson --labels-out labels.ndjson`,
		RunE: func(cmd *cobra.Command, _ []string) error { return loadgen.Run(cmd.Context(), *o) },
	}
	f := c.Flags()
	f.StringSliceVar(&o.Gen.Scenarios, "scenario", []string{"normal"}, "scenarios to mix: "+strings.Join(loadgen.Scenarios, ", "))
	f.Float64Var(&o.Gen.Rate, "rate", 200, "normal requests per second")
	f.DurationVar(&o.Gen.Duration, "duration", time.Minute, "how long the traffic lasts")
	f.IntVar(&o.Gen.MaxRequests, "max-requests", 0, "bound on the total (default rate*duration*3+10000)")
	f.Uint64Var(&o.Gen.Seed, "seed", 1, "random seed: the same seed gives the same traffic")
	f.DurationVar(&o.Gen.AttackEvery, "attack-every", 20*time.Second, "start an attack this often")
	f.DurationVar(&o.Gen.AttackAfter, "attack-after", 5*time.Second, "first attack after this long")
	f.StringVar(&o.Target, "target", "", "verifier base URL for HTTP mode")
	f.StringVar(&o.Out, "out", "", "NDJSON file of usage events to write instead of sending")
	f.StringVar(&o.KeysFile, "keys-file", "", "CSV lines key_id,project,secret")
	f.IntVar(&o.Synthetic, "synthetic-keys", 0, "invent this many key ids (NDJSON mode)")
	f.StringVar(&o.CountryHeader, "country-header", "CF-IPCountry", "header carrying the client's country")
	f.IntVar(&o.Workers, "workers", 32, "concurrent HTTP requests")
	f.StringVar(&o.Start, "start", "", "event time of the first event in NDJSON mode (default now; --eval: a minute of November 2026 drawn from --seed)")
	f.BoolVar(&o.Eval, "eval", false, "write a labelled evaluation set (--out, --labels-out)")
	f.Float64Var(&o.Days, "days", 3, "--eval: days of traffic")
	f.Float64Var(&o.EvalCfg.Scale, "scale", 1, "--eval: multiplies the benign populations")
	f.IntVar(&o.EvalCfg.Attacks, "attacks", 0, "--eval: attacks per scenario (0: 1 or 2, from the seed)")
	f.DurationVar(&o.EvalCfg.AttackAfter, "attack-after-eval", 0, "--eval: no attack before this much traffic (default 24h or a third of --days)")
	f.StringVar(&o.LabelsOut, "labels-out", "", "--eval: NDJSON file of attack labels")
	f.StringVar(&o.KeysOut, "keys-out", "", "--eval: NDJSON file of the keys with their kinds")
	return c
}
