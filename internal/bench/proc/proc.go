// Package proc reads this process's resource use (Linux /proc and
// getrusage) for benchmarks' figures. It imports nothing of keymeter, so
// any package's tests and benchmarks can use it.
package proc

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RSSMB is the resident set size in MiB (VmRSS), 0 if unknown.
func RSSMB() float64 { return statusMB("VmRSS") }

// PeakRSSMB is the peak resident set size in MiB (VmHWM), 0 if unknown.
func PeakRSSMB() float64 { return statusMB("VmHWM") }

func statusMB(field string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

// CPU is the process's user and system CPU time so far.
func CPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
