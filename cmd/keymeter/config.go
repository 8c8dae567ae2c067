package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/goccy/go-yaml"
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
