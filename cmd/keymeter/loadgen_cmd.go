package main

import (
	"os"
	"strings"

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
	o.Bind(c.Flags())
	return c
}
