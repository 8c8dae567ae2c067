// Package cliconfig gives every flag of the keymeter command three
// sources, in order of precedence: the command line, the environment
// (KEYMETER_<FLAG>), and a YAML config file of flag names to values.
package cliconfig

import (
	"fmt"
	"os"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

type configError struct {
	source, flag string
	err          error
}

func (e configError) Error() string {
	return fmt.Sprintf("%s: --%s: %v", e.source, e.flag, e.err)
}

// loadConfigFile reads a flat YAML map of flag names to values.
func loadConfigFile(path string) (map[string]any, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return m, nil
}

func setFromConfig(f *pflag.Flag, v any) error {
	switch x := v.(type) {
	case nil:
		return fmt.Errorf("no value (remove the key, or give one)")
	case map[string]any:
		return fmt.Errorf("a map is not a flag value")
	case []any:
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = fmt.Sprint(p)
		}
		return f.Value.Set(strings.Join(parts, ","))
	default:
		return f.Value.Set(fmt.Sprint(x))
	}
}

// EnvName is the environment variable for a flag.
func EnvName(flag string) string {
	return "KEYMETER_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Apply fills every flag of cmd not set on the command line from the
// environment (KEYMETER_<FLAG>), then from the config file at configPath
// (or KEYMETER_CONFIG): a flat YAML map of flag names to values. A key
// that is no flag of any command is an error.
func Apply(cmd *cobra.Command, configPath string) error {
	if configPath == "" {
		configPath = os.Getenv(EnvName("config"))
	}
	fileValues, err := loadConfigFile(configPath)
	if err != nil {
		return err
	}
	// One file may serve every role, so a key that is a flag of another
	// command is fine; a key no command knows is a mistake worth stopping for.
	if len(fileValues) > 0 {
		known := map[string]bool{}
		var walk func(c *cobra.Command)
		walk = func(c *cobra.Command) {
			c.Flags().VisitAll(func(f *pflag.Flag) { known[f.Name] = true })
			c.PersistentFlags().VisitAll(func(f *pflag.Flag) { known[f.Name] = true })
			for _, sub := range c.Commands() {
				walk(sub)
			}
		}
		walk(cmd.Root())
		for k := range fileValues {
			if !known[k] {
				return fmt.Errorf("config file %s: unknown key %q: keys are flag names (see keymeter <command> --help)", configPath, k)
			}
		}
	}
	var firstErr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || firstErr != nil {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if err := f.Value.Set(v); err != nil {
				firstErr = configError{source: "environment " + EnvName(f.Name), flag: f.Name, err: err}
			}
			return
		}
		if v, ok := fileValues[f.Name]; ok {
			if err := setFromConfig(f, v); err != nil {
				firstErr = configError{source: "config file " + configPath, flag: f.Name, err: err}
			}
		}
	})
	return firstErr
}
