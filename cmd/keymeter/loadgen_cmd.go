package main

import (
	"bufio"
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
	)
	c := &cobra.Command{
		Use:   "loadgen",
		Short: "Generate normal traffic and attacks against a verifier, or as an NDJSON file of events",
		Long: `Scenarios: ` + strings.Join(loadgen.Scenarios, ", ") + `. "normal" runs all the time;
attack scenarios take turns every --attack-every. The same --seed gives the same
traffic. Traffic is bounded by --duration and --max-requests.

HTTP mode (--target) needs real keys: --keys-file with lines "key_id,project,secret"
(keymeter dev writes one to <data-dir>/demo-keys.csv). NDJSON mode (--out) needs no
secrets: --synthetic-keys N invents key ids.`,
		Example: `  keymeter loadgen --target http://127.0.0.1:8080 --keys-file data/demo-keys.csv --scenario normal,geo-shift --rate 200 --duration 1m
  keymeter loadgen --out events.ndjson --synthetic-keys 50 --scenario normal,anon-burst,leaked-key --duration 10m --seed 42`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if (target == "") == (out == "") {
				return fmt.Errorf("give exactly one of --target (send HTTP requests) or --out (write NDJSON events)")
			}
			if keysFile != "" {
				ks, err := readKeysFile(keysFile)
				if err != nil {
					return err
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
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				w := bufio.NewWriterSize(f, 1<<20)
				if err := loadgen.WriteNDJSON(w, reqs, cfg.Seed, t0); err != nil {
					f.Close()
					return err
				}
				if err := w.Flush(); err != nil {
					f.Close()
					return err
				}
				return f.Close()
			}
			ctx, cancel := context.WithTimeout(ctx, cfg.Duration+30*time.Second)
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
	f.StringVar(&start, "start", "", "event time of the first event in NDJSON mode (default now)")
	return c
}

func readKeysFile(path string) ([]loadgen.Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--keys-file: %w", err)
	}
	var out []loadgen.Key
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, ",")
		if len(parts) != 3 {
			return nil, fmt.Errorf("%s:%d: want key_id,project,secret", path, i+1)
		}
		out = append(out, loadgen.Key{ID: parts[0], Project: parts[1], Secret: parts[2]})
	}
	return out, nil
}
