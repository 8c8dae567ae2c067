package aggregator

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// MemoryLimit is the Go runtime's soft memory limit a role sets
// (runtime/debug.SetMemoryLimit, what GOMEMLIMIT sets): past it the
// collector runs more often instead of letting the heap grow to twice
// what is live. Without one, the heap of an aggregator inserting 100k-event
// blocks peaked near twice its live ~0.45 GB (bench pipeline: RSS 1.2–1.3
// GB with the engine). It bounds Go's memory only: chDB's engine (about
// 0.4 GB) comes on top.
//
// The zero value leaves the runtime as it is (keymeter dev runs several
// roles in one process); the aggregator's flag defaults to auto.
type MemoryLimit struct {
	auto  bool
	bytes int64 // when not auto; 0: off
}

const (
	// memLimitBase is what an aggregator's heap holds besides its blocks
	// (an embedded NATS server's caches, the client's prefetched messages,
	// the key table).
	memLimitBase = 384 << 20
	// memLimitPerEvent is the room per event of the largest block: a block
	// being filled and one being inserted, each event's struct (~230 B) and
	// the message bytes it points into, plus the insert's RowBinary.
	memLimitPerEvent = 1 << 10
	minMemoryLimit   = 64 << 20
)

// AutoMemoryLimit is the default: memLimitBase plus room for the largest
// block (see Resolve).
func AutoMemoryLimit() MemoryLimit { return MemoryLimit{auto: true} }

// Set parses "auto", "off" (or "0"), or a size: bytes or a number with
// KiB, MiB, GiB, KB, MB or GB (as GOMEMLIMIT, plus the decimal units).
func (m *MemoryLimit) Set(s string) error {
	switch t := strings.TrimSpace(s); strings.ToLower(t) {
	case "auto":
		*m = MemoryLimit{auto: true}
		return nil
	case "off", "0":
		*m = MemoryLimit{}
		return nil
	default:
		n, err := parseSize(t)
		if err != nil {
			return err
		}
		if n < minMemoryLimit {
			return fmt.Errorf("%q is below the least accepted, 64MiB (the collector would run all the time); use off for no limit", s)
		}
		*m = MemoryLimit{bytes: n}
		return nil
	}
}

func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	mult, num := int64(1), s
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			mult, num = u.mult, strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || f*float64(mult) > 1<<50 {
		return 0, fmt.Errorf("%q is not a size: auto, off, or a number of bytes with an optional unit KiB, MiB, GiB, KB, MB, GB (e.g. 768MiB)", s)
	}
	return int64(f * float64(mult)), nil
}

func (m *MemoryLimit) String() string {
	switch {
	case m.auto:
		return "auto"
	case m.bytes == 0:
		return "off"
	case m.bytes%(1<<20) == 0:
		return strconv.FormatInt(m.bytes>>20, 10) + "MiB"
	default:
		return strconv.FormatInt(m.bytes, 10)
	}
}

// Type is the flag's type name in help texts.
func (m *MemoryLimit) Type() string { return "size" }

// Resolve is the limit in bytes for blocks of up to blockEvents events; 0:
// none. Auto is memLimitBase plus memLimitPerEvent per event of the
// largest block: 579 MiB for 100k-event blocks growing to 200k (measured:
// bench pipeline's Go heap stays under it, and its RSS falls from
// 1.2–1.3 GB to about 0.9–1.0 GB).
func (m MemoryLimit) Resolve(blockEvents int) int64 {
	if m.auto {
		return memLimitBase + memLimitPerEvent*int64(max(blockEvents, 0))
	}
	return m.bytes
}

// Apply sets the process's soft memory limit to Resolve(blockEvents)
// unless GOMEMLIMIT is set (the environment wins) or there is none, and
// returns a function that restores the previous limit.
func (m MemoryLimit) Apply(blockEvents int, log *slog.Logger) (restore func()) {
	limit := m.Resolve(blockEvents)
	if limit <= 0 {
		return func() {}
	}
	if env := os.Getenv("GOMEMLIMIT"); env != "" {
		log.Info("memory limit: GOMEMLIMIT is set and wins over --memory-limit", "GOMEMLIMIT", env)
		return func() {}
	}
	prev := debug.SetMemoryLimit(limit)
	// Under a limit, the limit decides when the collector runs: GOGC's
	// default 100 would start it at twice the live heap, long before the
	// limit when most of the heap is garbage (an aggregator with its bus
	// in another process: ~0.25 GB live), and every cycle rescans the
	// blocks' events. GOGC, when set, wins.
	prevGC := -1
	if os.Getenv("GOGC") == "" {
		prevGC = debug.SetGCPercent(gcPercentUnderLimit)
	}
	log.Info("memory limit: Go runtime soft limit set", "memory_limit_mib", limit>>20)
	return func() {
		debug.SetMemoryLimit(prev)
		if prevGC >= 0 {
			debug.SetGCPercent(prevGC)
		}
	}
}

// gcPercentUnderLimit is the GC percent set with a memory limit: high
// enough that the limit, not the heap's growth, triggers collection.
const gcPercentUnderLimit = 400
