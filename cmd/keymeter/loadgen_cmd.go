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

// loadgenFlags are the flags of `keymeter loadgen`.
type loadgenFlags struct {
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
}

func newLoadgenCmd(g *globals) *cobra.Command {
	o := &loadgenFlags{}
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
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context()) },
	}
	f := c.Flags()
	f.StringSliceVar(&o.cfg.Scenarios, "scenario", []string{"normal"}, "scenarios to mix: "+strings.Join(loadgen.Scenarios, ", "))
	f.Float64Var(&o.cfg.Rate, "rate", 200, "normal requests per second")
	f.DurationVar(&o.cfg.Duration, "duration", time.Minute, "how long the traffic lasts")
	f.IntVar(&o.cfg.MaxRequests, "max-requests", 0, "bound on the total (default rate*duration*3+10000)")
	f.Uint64Var(&o.cfg.Seed, "seed", 1, "random seed: the same seed gives the same traffic")
	f.DurationVar(&o.cfg.AttackEvery, "attack-every", 20*time.Second, "start an attack this often")
	f.DurationVar(&o.cfg.AttackAfter, "attack-after", 5*time.Second, "first attack after this long")
	f.StringVar(&o.target, "target", "", "verifier base URL for HTTP mode")
	f.StringVar(&o.out, "out", "", "NDJSON file of usage events to write instead of sending")
	f.StringVar(&o.keysFile, "keys-file", "", "CSV lines key_id,project,secret")
	f.IntVar(&o.synthetic, "synthetic-keys", 0, "invent this many key ids (NDJSON mode)")
	f.StringVar(&o.countryHeader, "country-header", "CF-IPCountry", "header carrying the client's country")
	f.IntVar(&o.workers, "workers", 32, "concurrent HTTP requests")
	f.StringVar(&o.start, "start", "", "event time of the first event in NDJSON mode (default now; --eval: a minute of November 2026 drawn from --seed)")
	f.BoolVar(&o.eval, "eval", false, "write a labelled evaluation set (--out, --labels-out)")
	f.Float64Var(&o.days, "days", 3, "--eval: days of traffic")
	f.Float64Var(&o.ecfg.Scale, "scale", 1, "--eval: multiplies the benign populations")
	f.IntVar(&o.ecfg.Attacks, "attacks", 0, "--eval: attacks per scenario (0: 1 or 2, from the seed)")
	f.DurationVar(&o.ecfg.AttackAfter, "attack-after-eval", 0, "--eval: no attack before this much traffic (default 24h or a third of --days)")
	f.StringVar(&o.labelsOut, "labels-out", "", "--eval: NDJSON file of attack labels")
	f.StringVar(&o.keysOut, "keys-out", "", "--eval: NDJSON file of the keys with their kinds")
	return c
}

// runEval writes a labelled evaluation set.
func (o *loadgenFlags) runEval() error {
	if o.out == "" || o.labelsOut == "" {
		return fmt.Errorf("--eval needs --out (events) and --labels-out (labels)")
	}
	if o.start != "" {
		t, err := time.Parse(time.RFC3339, o.start)
		if err != nil {
			return fmt.Errorf("--start %q: want RFC 3339", o.start)
		}
		o.ecfg.Start = t
	}
	o.ecfg.Seed = o.cfg.Seed
	o.ecfg.Duration = time.Duration(o.days * float64(24*time.Hour))
	return loadgen.WriteEvalSet(o.ecfg, loadgen.EvalFiles{Events: o.out, Labels: o.labelsOut, Keys: o.keysOut}, os.Stdout, os.Stderr)
}

// run generates the traffic and sends it or writes it.
func (o *loadgenFlags) run(ctx context.Context) error {
	if o.eval {
		return o.runEval()
	}
	if (o.target == "") == (o.out == "") {
		return fmt.Errorf("give exactly one of --target (send HTTP requests) or --out (write NDJSON events)")
	}
	if o.keysFile != "" {
		ks, err := loadgen.ReadKeysFile(o.keysFile)
		if err != nil {
			return fmt.Errorf("--keys-file: %w", err)
		}
		o.cfg.Keys = ks
	}
	for i := range o.synthetic {
		o.cfg.Keys = append(o.cfg.Keys, loadgen.Key{ID: fmt.Sprintf("key_synthetic_%04d", i), Project: "proj_synthetic"})
	}
	if o.target != "" {
		for _, k := range o.cfg.Keys {
			if k.Secret == "" {
				return fmt.Errorf("--target needs keys with secrets (--keys-file); --synthetic-keys are for --out only")
			}
		}
	}
	reqs, err := loadgen.Generate(o.cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "loadgen: %d requests over %s (scenarios %s, seed %d)\n", len(reqs), o.cfg.Duration, strings.Join(o.cfg.Scenarios, ","), o.cfg.Seed)
	if o.out != "" {
		t0 := time.Now().UTC().Truncate(time.Second)
		if o.start != "" {
			if t0, err = time.Parse(time.RFC3339, o.start); err != nil {
				return fmt.Errorf("--start %q: want RFC 3339", o.start)
			}
		}
		return loadgen.WriteNDJSONFile(o.out, reqs, o.cfg.Seed, t0)
	}
	ctx, cancel := context.WithTimeout(ctx, o.cfg.Duration+30*time.Second)
	defer cancel()
	st, err := loadgen.SendHTTP(ctx, loadgen.HTTPConfig{Target: o.target, CountryHeader: o.countryHeader, Workers: o.workers}, reqs)
	fmt.Println("loadgen " + st.String())
	return err
}
