package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/cliconfig"
)

// commandFactories are the subcommands. Each lives in its own file and adds
// itself with register in an init function, so roles can be written apart.
var commandFactories []func(*globals) *cobra.Command

func register(f func(*globals) *cobra.Command) { commandFactories = append(commandFactories, f) }

// globals are the flags every subcommand shares.
type globals struct {
	LogLevel  string
	LogFormat string
	Config    string
	// CPUProfile, when set, receives a CPU profile of the command.
	CPUProfile string
	profile    *os.File
}

func (g *globals) startProfile() error {
	if g.CPUProfile == "" {
		return nil
	}
	f, err := os.Create(g.CPUProfile)
	if err != nil {
		return fmt.Errorf("--cpuprofile: %w", err)
	}
	g.profile = f
	return pprof.StartCPUProfile(f)
}

func (g *globals) stopProfile() {
	if g.profile != nil {
		pprof.StopCPUProfile()
		g.profile.Close()
	}
}

// Logger builds the structured logger the flags ask for.
func (g *globals) Logger() *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(g.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if g.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "keymeter",
		Short: "API key verification, metering and abuse detection",
		Long: `keymeter verifies API keys at the edge, meters every request per key into
ClickHouse, and runs CEL detection rules that throttle or revoke abused keys.

Every flag can also be set in the environment as KEYMETER_<FLAG> (dashes become
underscores, e.g. KEYMETER_DATA_DIR) or in a YAML config file (--config).
Precedence: flag, then environment, then config file, then default.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := cliconfig.Apply(cmd, g.Config); err != nil {
				return err
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(g.LogLevel)); err != nil {
				return fmt.Errorf("--log-level %q: accepted values are debug, info, warn, error", g.LogLevel)
			}
			if g.LogFormat != "text" && g.LogFormat != "json" {
				return fmt.Errorf("--log-format %q: accepted values are text, json", g.LogFormat)
			}
			return g.startProfile()
		},
		PersistentPostRun: func(*cobra.Command, []string) { g.stopProfile() },
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.StringVar(&g.LogFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&g.CPUProfile, "cpuprofile", "", "write a CPU profile to this file (go tool pprof)")
	_ = pf.MarkHidden("cpuprofile")
	pf.StringVar(&g.Config, "config", "", "YAML config file: keys are flag names (e.g. data-dir: /var/lib/keymeter)")
	for _, f := range commandFactories {
		root.AddCommand(f(g))
	}
	return root
}
