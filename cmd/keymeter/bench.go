package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/bench"
	"github.com/keymeter/keymeter/internal/bench/proc"
)

// benchFactories are the `keymeter bench` subcommands; files add theirs
// with registerBench from an init function. The harnesses are in
// internal/bench; a subcommand parses flags and opens what it runs on.
var benchFactories []func(*globals) *cobra.Command

func registerBench(f func(*globals) *cobra.Command) { benchFactories = append(benchFactories, f) }

func init() {
	register(func(g *globals) *cobra.Command {
		c := &cobra.Command{
			Use:   "bench",
			Short: "System benchmarks: each prints progress on stderr and one summary line of name=value figures on stdout",
		}
		for _, f := range benchFactories {
			c.AddCommand(f(g))
		}
		return c
	})
}

// benchPrefix is a fresh bus prefix, so an earlier run's events are not counted.
func benchPrefix(name string) string {
	return fmt.Sprintf("%s%d", name, time.Now().UnixNano()%1_000_000_000)
}

// The names below are for the benchmarks still written in their command
// files (bench revocation and proxy in verifier_cmds.go); they go when those move to internal/bench.

type summary struct{ bench.Summary }

func (s *summary) add(name string, v any) { s.Summary.Add(name, v) }
func (s summary) print()                  { s.Summary.Print(os.Stdout) }

func percentileMS(d []time.Duration, p float64) float64 { return bench.PercentileMS(d, p) }

func rssMB() float64 { return proc.RSSMB() }

type progress struct {
	name  string
	every time.Duration
	p     *bench.Progress
}

func (p *progress) tick(_ any, format string, args ...any) {
	if p.p == nil {
		p.p = &bench.Progress{Name: p.name, Every: p.every}
	}
	p.p.Tick(format, args...)
}
