package loadgen

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// RunConfig is one run of keymeter loadgen: generate traffic and send it
// to a verifier (Target) or write it as NDJSON events (Out), or with Eval
// write a labelled evaluation set. Errors name the flag at fault.
type RunConfig struct {
	Gen           Config // --scenario, --rate, --duration, --seed, ...
	Target        string // verifier base URL (HTTP mode)
	Out           string // NDJSON events file
	KeysFile      string // CSV key_id,project,secret
	Synthetic     int    // invented key ids (NDJSON mode)
	CountryHeader string
	Workers       int
	Start         string // RFC 3339 event time of the first event
	Eval          bool
	EvalCfg       EvalConfig
	Days          float64 // --eval: days of traffic
	LabelsOut     string
	KeysOut       string
	// Stdout gets the summary, Stderr progress.
	Stdout, Stderr io.Writer
}

// Run does what the configuration says.
func Run(ctx context.Context, o RunConfig) error {
	if o.Eval {
		return o.runEval()
	}
	if (o.Target == "") == (o.Out == "") {
		return fmt.Errorf("give exactly one of --target (send HTTP requests) or --out (write NDJSON events)")
	}
	if o.KeysFile != "" {
		ks, err := ReadKeysFile(o.KeysFile)
		if err != nil {
			return fmt.Errorf("--keys-file: %w", err)
		}
		o.Gen.Keys = ks
	}
	for i := range o.Synthetic {
		o.Gen.Keys = append(o.Gen.Keys, Key{ID: fmt.Sprintf("key_synthetic_%04d", i), Project: "proj_synthetic"})
	}
	if o.Target != "" {
		for _, k := range o.Gen.Keys {
			if k.Secret == "" {
				return fmt.Errorf("--target needs keys with secrets (--keys-file); --synthetic-keys are for --out only")
			}
		}
	}
	reqs, err := Generate(o.Gen)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Stderr, "loadgen: %d requests over %s (scenarios %s, seed %d)\n", len(reqs), o.Gen.Duration, strings.Join(o.Gen.Scenarios, ","), o.Gen.Seed)
	if o.Out != "" {
		t0 := time.Now().UTC().Truncate(time.Second)
		if o.Start != "" {
			if t0, err = time.Parse(time.RFC3339, o.Start); err != nil {
				return fmt.Errorf("--start %q: want RFC 3339", o.Start)
			}
		}
		return WriteNDJSONFile(o.Out, reqs, o.Gen.Seed, t0)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Gen.Duration+30*time.Second)
	defer cancel()
	st, err := SendHTTP(ctx, HTTPConfig{Target: o.Target, CountryHeader: o.CountryHeader, Workers: o.Workers}, reqs)
	fmt.Fprintln(o.Stdout, "loadgen "+st.String())
	return err
}

// runEval writes a labelled evaluation set.
func (o RunConfig) runEval() error {
	if o.Out == "" || o.LabelsOut == "" {
		return fmt.Errorf("--eval needs --out (events) and --labels-out (labels)")
	}
	if o.Start != "" {
		t, err := time.Parse(time.RFC3339, o.Start)
		if err != nil {
			return fmt.Errorf("--start %q: want RFC 3339", o.Start)
		}
		o.EvalCfg.Start = t
	}
	o.EvalCfg.Seed = o.Gen.Seed
	o.EvalCfg.Duration = time.Duration(o.Days * float64(24*time.Hour))
	return WriteEvalSet(o.EvalCfg, EvalFiles{Events: o.Out, Labels: o.LabelsOut, Keys: o.KeysOut}, o.Stdout, o.Stderr)
}
