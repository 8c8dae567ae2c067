// Command keymeter is one binary whose subcommands are the pipeline's roles
// (verifier, aggregator, detector, api, dev) and its tools (keys, usage,
// logs, billing, rules, loadgen, bench, migrate). No logic lives here:
// flags, config loading, wiring and signals.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "keymeter:", err)
		os.Exit(1)
	}
}
