package aggregator

import (
	"log/slog"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestMemoryLimitFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64 // Resolve(100_000); -1: rejected
		str  string
	}{
		{"auto", memLimitBase + 100_000*memLimitPerEvent, "auto"},
		{"off", 0, "off"},
		{"0", 0, "off"},
		{"768MiB", 768 << 20, "768MiB"},
		{"1GiB", 1 << 30, "1024MiB"},
		{"1.5GiB", 3 << 29, "1536MiB"},
		{"900MB", 900e6, "900000000"},
		{"104857600", 100 << 20, "100MiB"},
		{"12MiB", -1, ""}, // below 64MiB: the collector would never rest
		{"lots", -1, ""},  // not a size
		{"-1GiB", -1, ""}, // negative
		{"5 apples", -1, ""},
	} {
		var m MemoryLimit
		err := m.Set(tc.in)
		if tc.want < 0 {
			if err == nil {
				t.Errorf("Set(%q) accepted", tc.in)
			} else if !strings.Contains(err.Error(), tc.in) {
				t.Errorf("Set(%q): error %q does not quote the value", tc.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Set(%q): %v", tc.in, err)
			continue
		}
		if got := m.Resolve(100_000); got != tc.want {
			t.Errorf("Set(%q).Resolve = %d, want %d", tc.in, got, tc.want)
		}
		if m.String() != tc.str {
			t.Errorf("Set(%q).String() = %q, want %q", tc.in, m.String(), tc.str)
		}
	}
	if (MemoryLimit{}).Resolve(100_000) != 0 {
		t.Error("the zero MemoryLimit sets a limit (keymeter dev's roles share the process)")
	}
	// The role's flag defaults to auto and rejects a bad value by name.
	var rc RunConfig
	fs := pflag.NewFlagSet("aggregator", pflag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	rc.Bind(fs)
	if rc.MemoryLimit.String() != "auto" {
		t.Errorf("--memory-limit default %s, want auto", rc.MemoryLimit.String())
	}
	if err := fs.Parse([]string{"--memory-limit", "3KiB"}); err == nil || !strings.Contains(err.Error(), "memory-limit") {
		t.Errorf("--memory-limit 3KiB: %v", err)
	}
}

func TestMemoryLimitApplyAndRestore(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	t.Setenv("GOGC", "")
	before := debug.SetMemoryLimit(-1)
	gcBefore := debug.SetGCPercent(100)
	defer debug.SetGCPercent(gcBefore)
	m := MemoryLimit{bytes: 700 << 20}
	restore := m.Apply(100_000, slog.New(slog.DiscardHandler))
	if got := debug.SetMemoryLimit(-1); got != 700<<20 {
		t.Errorf("limit while applied %d, want %d", got, 700<<20)
	}
	// The limit, not GOGC's default, triggers the collector.
	if got := debug.SetGCPercent(gcPercentUnderLimit); got != gcPercentUnderLimit {
		t.Errorf("GC percent while applied %d, want %d", got, gcPercentUnderLimit)
	}
	restore()
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("limit after restore %d, want %d", got, before)
	}
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GC percent after restore %d, want 100", got)
	}
	// GOGC, set by whoever runs the process, wins over the GC percent.
	t.Setenv("GOGC", "150")
	restore = m.Apply(100_000, slog.New(slog.DiscardHandler))
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("with GOGC set, the GC percent changed to %d", got)
	}
	restore()
	t.Setenv("GOGC", "")
	// GOMEMLIMIT, set by whoever runs the process, wins.
	t.Setenv("GOMEMLIMIT", "900MiB")
	restore = m.Apply(100_000, slog.New(slog.DiscardHandler))
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("with GOMEMLIMIT set, the limit changed to %d", got)
	}
	restore()
}
