package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
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
