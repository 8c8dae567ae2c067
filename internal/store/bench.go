package store

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/keymeter/keymeter/internal/event"
)

// BenchConfig is the insert benchmark of `keymeter bench store`.
type BenchConfig struct {
	Events  int        // total events
	Batch   int        // events per InsertEvents call (one bus range)
	Keys    int        // distinct keys
	Rollups RollupMode // preaggregated or views
}

// BenchResult is what the benchmark measured.
type BenchResult struct {
	Events       int
	Elapsed      time.Duration
	EventsPerSec float64
	RSSMB        float64       // peak resident set of the process (VmHWM)
	CPU          time.Duration // user+system CPU of the process (Go and the engine) during the run
	Stored       uint64
	RollupSum    uint64
}

// Bench inserts cfg.Events generated events through InsertEvents (raw rows
// and rollups) and reports the rate. Generation overlaps with inserting and
// is included in the time.
func Bench(ctx context.Context, d *DB, cfg BenchConfig, progress io.Writer) (BenchResult, error) {
	var r BenchResult
	if cfg.Batch <= 0 {
		cfg.Batch = 100_000
	}
	if cfg.Keys <= 0 {
		cfg.Keys = 1000
	}
	if cfg.Rollups == RollupViews {
		if err := d.UseRollupViews(ctx); err != nil {
			return r, err
		}
	}
	batches := make(chan []event.Event, 2)
	free := make(chan []event.Event, 3)
	for range 3 {
		free <- make([]event.Event, cfg.Batch)
	}
	start := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
	go func() {
		defer close(batches)
		for off := 0; off < cfg.Events; off += cfg.Batch {
			n := min(cfg.Batch, cfg.Events-off)
			var b []event.Event
			select {
			case b = <-free:
			case <-ctx.Done():
				return
			}
			b = b[:n]
			BenchEvents(b, off, cfg.Keys, start)
			batches <- b
		}
	}()
	fmt.Fprintf(progress, "bench store: before inserting: rss_mb=%.0f\n", rssMB("VmRSS"))
	run := "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	cpu0 := cpuTime()
	t0 := time.Now()
	last := t0
	done := 0
	for b := range batches {
		token := run + "/" + strconv.Itoa(done) + "-" + strconv.Itoa(done+len(b)-1)
		if err := d.InsertEvents(ctx, token, b); err != nil {
			return r, err
		}
		done += len(b)
		free <- b[:cap(b)]
		if time.Since(last) > time.Second || done == cfg.Events {
			last = time.Now()
			el := last.Sub(t0).Seconds()
			fmt.Fprintf(progress, "bench store: %d/%d events, %.0f events/s, rss_mb=%.0f\n", done, cfg.Events, float64(done)/el, rssMB("VmRSS"))
		}
	}
	if err := ctx.Err(); err != nil {
		return r, err
	}
	r.Events = done
	r.Elapsed = time.Since(t0)
	r.CPU = cpuTime() - cpu0
	r.EventsPerSec = float64(done) / r.Elapsed.Seconds()
	r.RSSMB = rssMB("VmHWM")
	var err error
	if r.Stored, err = d.Count(ctx, "requests"); err != nil {
		return r, err
	}
	pts, err := d.Usage(ctx, UsageQuery{Project: "bench", From: start.Add(-time.Hour), To: start.Add(48 * time.Hour), Granularity: Day})
	for _, p := range pts {
		r.RollupSum += p.Requests
	}
	return r, err
}

// BenchEvents fills b with events number off.. spread over one hour. The
// strings of a batch share one buffer, so generation costs little.
func BenchEvents(b []event.Event, off, keys int, start time.Time) {
	routes := [...]string{"/v1/items", "/v1/orders", "/v1/users", "/v1/search"}
	countries := [...]string{"DE", "US", "FR", "JP", "BR", "IN"}
	keyNames := benchKeyNames(keys)
	buf := make([]byte, 0, len(b)*24)
	ends := make([]int, 0, 2*len(b)) // end of each id, end of each ip
	for i := range b {
		n := off + i
		buf = append(buf, "ev-"...)
		buf = strconv.AppendInt(buf, int64(n), 10)
		ends = append(ends, len(buf))
		// A key is used from a few servers: 4 addresses per key.
		k := n % keys
		buf = append(buf, "10."...)
		buf = strconv.AppendInt(buf, int64(k%7), 10)
		buf = append(buf, '.')
		buf = strconv.AppendInt(buf, int64(k/7%250), 10)
		buf = append(buf, '.')
		buf = strconv.AppendInt(buf, int64(n/keys%4), 10)
		ends = append(ends, len(buf))
	}
	all := unsafe.String(unsafe.SliceData(buf), len(buf))
	pos := 0
	for i := range b {
		n := off + i
		id := all[pos:ends[2*i]]
		ip := all[ends[2*i]:ends[2*i+1]]
		pos = ends[2*i+1]
		o := event.OutcomeValid
		status := uint16(200)
		if n%50 == 0 {
			o, status = event.OutcomeRateLimited, 429
		}
		b[i] = event.Event{
			ID: id, Time: start.Add(time.Duration(n%3_600_000) * time.Millisecond), Project: "bench",
			KeyID: keyNames[n%keys], Outcome: o, ClientIP: ip, Country: countries[n%len(countries)],
			ASN: 64500, Method: "GET", Host: "api.example.com", Route: routes[n%len(routes)], Status: status,
			LatencyUS: uint32(n % 5000), BytesIn: uint64(200 + n%100), BytesOut: uint64(2000 + n%1000),
			UserAgent: "loadgen/1", VerifierID: "v1", CostUnits: 1,
		}
	}
}

var benchKeys []string

func benchKeyNames(n int) []string {
	if len(benchKeys) != n {
		benchKeys = make([]string, n)
		for i := range benchKeys {
			benchKeys[i] = "key_" + strconv.Itoa(i)
		}
	}
	return benchKeys
}

// rssMB reads a memory figure (VmRSS, VmHWM) of this process from /proc.
func rssMB(field string) float64 {
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

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
