package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// benchFactories are the `keymeter bench` subcommands; files add theirs
// with registerBench from an init function.
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

// summary prints the one stdout line of a benchmark, in the order given.
type summary []string

func (s *summary) add(name string, v any) {
	switch x := v.(type) {
	case float64:
		*s = append(*s, fmt.Sprintf("%s=%.1f", name, x))
	default:
		*s = append(*s, fmt.Sprintf("%s=%v", name, x))
	}
}

func (s summary) print() { fmt.Fprintln(os.Stdout, strings.Join(s, " ")) }

// percentile of sorted-in-place durations, in milliseconds.
func percentileMS(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	i := int(float64(len(d)-1) * p)
	return float64(d[i].Microseconds()) / 1000
}

// rssMB is the process's resident set size (Linux), 0 if unknown.
func rssMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:")), "%f", &kb)
			return kb / 1024
		}
	}
	return 0
}

// progress prints a line on stderr at most every interval.
type progress struct {
	name  string
	last  time.Time
	every time.Duration
}

func (p *progress) tick(ctx context.Context, format string, args ...any) {
	if time.Since(p.last) < p.every {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(os.Stderr, "%s: "+format+"\n", append([]any{p.name}, args...)...)
}
