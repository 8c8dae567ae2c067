package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/loadgen"
)

func init() { register(newLoadgenCmd) }

func newLoadgenCmd(g *globals) *cobra.Command {
	var (
		cfg           loadgen.Config
		target        string
		out           string
		keysFile      string
		synthetic     int
		countryHeader string
		workers       int
		start         string
		eval          bool
		ecfg          loadgen.EvalConfig
		days          float64
		labelsOut     string
		keysOut       string
	)
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
		RunE: func(cmd *cobra.Command, _ []string) error {
			if eval {
				if out == "" || labelsOut == "" {
					return fmt.Errorf("--eval needs --out (events) and --labels-out (labels)")
				}
				if start != "" {
					t, err := time.Parse(time.RFC3339, start)
					if err != nil {
						return fmt.Errorf("--start %q: want RFC 3339", start)
					}
					ecfg.Start = t
				}
				ecfg.Seed = cfg.Seed
				ecfg.Duration = time.Duration(days * float64(24*time.Hour))
				return loadgen.WriteEvalSet(ecfg, loadgen.EvalFiles{Events: out, Labels: labelsOut, Keys: keysOut}, os.Stdout, os.Stderr)
			}
			if (target == "") == (out == "") {
				return fmt.Errorf("give exactly one of --target (send HTTP requests) or --out (write NDJSON events)")
			}
			if keysFile != "" {
				ks, err := loadgen.ReadKeysFile(keysFile)
				if err != nil {
					return fmt.Errorf("--keys-file: %w", err)
				}
				cfg.Keys = ks
			}
			for i := range synthetic {
				cfg.Keys = append(cfg.Keys, loadgen.Key{ID: fmt.Sprintf("key_synthetic_%04d", i), Project: "proj_synthetic"})
			}
			if target != "" {
				for _, k := range cfg.Keys {
					if k.Secret == "" {
						return fmt.Errorf("--target needs keys with secrets (--keys-file); --synthetic-keys are for --out only")
					}
				}
			}
			reqs, err := loadgen.Generate(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "loadgen: %d requests over %s (scenarios %s, seed %d)\n", len(reqs), cfg.Duration, strings.Join(cfg.Scenarios, ","), cfg.Seed)
			if out != "" {
				t0 := time.Now().UTC().Truncate(time.Second)
				if start != "" {
					if t0, err = time.Parse(time.RFC3339, start); err != nil {
						return fmt.Errorf("--start %q: want RFC 3339", start)
					}
				}
				return loadgen.WriteNDJSONFile(out, reqs, cfg.Seed, t0)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), cfg.Duration+30*time.Second)
			defer cancel()
			st, err := loadgen.SendHTTP(ctx, loadgen.HTTPConfig{Target: target, CountryHeader: countryHeader, Workers: workers}, reqs)
			fmt.Println("loadgen " + st.String())
			return err
		},
	}
	f := c.Flags()
	f.StringSliceVar(&cfg.Scenarios, "scenario", []string{"normal"}, "scenarios to mix: "+strings.Join(loadgen.Scenarios, ", "))
	f.Float64Var(&cfg.Rate, "rate", 200, "normal requests per second")
	f.DurationVar(&cfg.Duration, "duration", time.Minute, "how long the traffic lasts")
	f.IntVar(&cfg.MaxRequests, "max-requests", 0, "bound on the total (default rate*duration*3+10000)")
	f.Uint64Var(&cfg.Seed, "seed", 1, "random seed: the same seed gives the same traffic")
	f.DurationVar(&cfg.AttackEvery, "attack-every", 20*time.Second, "start an attack this often")
	f.DurationVar(&cfg.AttackAfter, "attack-after", 5*time.Second, "first attack after this long")
	f.StringVar(&target, "target", "", "verifier base URL for HTTP mode")
	f.StringVar(&out, "out", "", "NDJSON file of usage events to write instead of sending")
	f.StringVar(&keysFile, "keys-file", "", "CSV lines key_id,project,secret")
	f.IntVar(&synthetic, "synthetic-keys", 0, "invent this many key ids (NDJSON mode)")
	f.StringVar(&countryHeader, "country-header", "CF-IPCountry", "header carrying the client's country")
	f.IntVar(&workers, "workers", 32, "concurrent HTTP requests")
	f.StringVar(&start, "start", "", "event time of the first event in NDJSON mode (default now; --eval: a minute of November 2026 drawn from --seed)")
	f.BoolVar(&eval, "eval", false, "write a labelled evaluation set (--out, --labels-out)")
	f.Float64Var(&days, "days", 3, "--eval: days of traffic")
	f.Float64Var(&ecfg.Scale, "scale", 1, "--eval: multiplies the benign populations")
	f.IntVar(&ecfg.Attacks, "attacks", 0, "--eval: attacks per scenario (0: 1 or 2, from the seed)")
	f.DurationVar(&ecfg.AttackAfter, "attack-after-eval", 0, "--eval: no attack before this much traffic (default 24h or a third of --days)")
	f.StringVar(&labelsOut, "labels-out", "", "--eval: NDJSON file of attack labels")
	f.StringVar(&keysOut, "keys-out", "", "--eval: NDJSON file of the keys with their kinds")
	return c
}
