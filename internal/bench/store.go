package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/bench/proc"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// StoreConfig is the insert benchmark of `keymeter bench store`.
type StoreConfig struct {
	DB      *store.DB        // migrated by RunStore; a fresh database, so earlier runs do not count
	Backend string           // for the summary: chdb, clickhouse
	Events  int              // total events
	Batch   int              // events per InsertEvents call (one bus range)
	Keys    int              // distinct keys
	Rollups store.RollupMode // preaggregated or views
	// Writers insert batches concurrently, as an aggregator does for its
	// partitions (default 1). chDB runs one statement at a time, so a second
	// writer overlaps one batch's Go work (encoding, pre-aggregation) with
	// another's insert.
	Writers int
	// NoWarmup skips the untimed warm-up: one batch into a scratch
	// database first, as a long-running aggregator is warm (a cold process
	// measured ~20% slower: library pages, allocator, first-use costs).
	NoWarmup bool
	// Span is the time the events cover, ending now (default 1h). A 30-day
	// span makes a dataset for the query figures.
	Span time.Duration
	// Queries: after inserting, this many per-key 30-day usage queries and
	// as many filtered log pages, for their latency percentiles.
	Queries int
	Output
}

// StoreResult is what the store benchmark measured.
type StoreResult struct {
	Events       int
	Elapsed      time.Duration
	EventsPerSec float64
	RSSMB        float64       // peak resident set of the process (VmHWM)
	CPU          time.Duration // user+system CPU of the process (Go and the engine) during the run
	UsageP50     time.Duration // per-key 30-day usage, day granularity
	UsageP99     time.Duration
	LogsP50      time.Duration // one page of 100 of a key's events, filtered by status class
	LogsP99      time.Duration
	Stored       uint64
	RollupSum    uint64
}

// StoreInsert inserts cfg.Events generated events through InsertEvents
// (raw rows and rollups) and reports the rate. Generation overlaps with
// inserting and is included in the time.
func StoreInsert(ctx context.Context, cfg StoreConfig) (StoreResult, error) {
	var r StoreResult
	d, progress := cfg.DB, cfg.progress()
	cfg.fill()
	if cfg.Rollups == store.RollupViews {
		if err := d.UseRollupViews(ctx); err != nil {
			return r, err
		}
	}
	start := time.Now().UTC().Add(-cfg.Span).Truncate(time.Minute)
	if !cfg.NoWarmup {
		if err := benchWarmup(ctx, d, cfg, start); err != nil {
			return r, err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	// One batch per writer being inserted, one being generated.
	batches := make(chan []event.Event)
	free := make(chan []event.Event, cfg.Writers+1)
	for range cfg.Writers + 1 {
		free <- make([]event.Event, cfg.Batch)
	}
	g.Go(func() error { return generateBatches(gctx, cfg, start, free, batches) })
	fmt.Fprintf(progress, "bench store: before inserting: rss_mb=%.0f\n", proc.RSSMB())
	run := "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	cpu0 := proc.CPU()
	t0 := time.Now()
	var mu sync.Mutex
	last := t0
	done := 0
	for range cfg.Writers {
		g.Go(func() error {
			for b := range batches {
				// The token names the batch's range, as a bus consumer's would.
				first := b[0].ID
				token := run + "/" + first + "+" + strconv.Itoa(len(b))
				if err := d.InsertEvents(gctx, token, b); err != nil {
					return err
				}
				mu.Lock()
				done += len(b)
				if time.Since(last) > time.Second || done == cfg.Events {
					last = time.Now()
					el := last.Sub(t0).Seconds()
					fmt.Fprintf(progress, "bench store: %d/%d events, %.0f events/s, rss_mb=%.0f\n", done, cfg.Events, float64(done)/el, proc.RSSMB())
				}
				mu.Unlock()
				free <- b[:cap(b)]
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return r, err
	}
	if err := ctx.Err(); err != nil {
		return r, err
	}
	r.Events = done
	r.Elapsed = time.Since(t0)
	r.CPU = proc.CPU() - cpu0
	r.EventsPerSec = float64(done) / r.Elapsed.Seconds()
	r.RSSMB = proc.PeakRSSMB()
	if err := storeCounts(ctx, d, start, &r); err != nil {
		return r, err
	}
	if cfg.Queries > 0 {
		return r, storeQueries(ctx, d, cfg, &r, progress)
	}
	return r, nil
}

// fill sets the defaults of StoreInsert.
func (cfg *StoreConfig) fill() {
	if cfg.Batch <= 0 {
		cfg.Batch = 100_000
	}
	if cfg.Keys <= 0 {
		cfg.Keys = 1000
	}
	if cfg.Writers <= 0 {
		cfg.Writers = 1
	}
	if cfg.Span <= 0 {
		cfg.Span = time.Hour
	}
}

// generateBatches fills the free batches with the events of the run, in
// order, and hands them to the writers; it closes batches at the end.
func generateBatches(ctx context.Context, cfg StoreConfig, start time.Time, free <-chan []event.Event, batches chan<- []event.Event) error {
	defer close(batches)
	for off := 0; off < cfg.Events; off += cfg.Batch {
		n := min(cfg.Batch, cfg.Events-off)
		var b []event.Event
		select {
		case b = <-free:
		case <-ctx.Done():
			return ctx.Err()
		}
		b = b[:n]
		Events(b, off, cfg.Keys, start, cfg.Span, cfg.Events)
		select {
		case batches <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// storeCounts reads back the raw rows stored and the requests the rollups
// sum to, for the lost/duplicated check.
func storeCounts(ctx context.Context, d *store.DB, start time.Time, r *StoreResult) error {
	var err error
	if r.Stored, err = d.Count(ctx, "requests"); err != nil {
		return err
	}
	pts, err := d.Usage(ctx, store.UsageQuery{Project: "bench", From: start.Add(-time.Hour), To: time.Now().Add(time.Hour), Granularity: store.Month})
	if err != nil {
		return err
	}
	for _, p := range pts {
		r.RollupSum += p.Requests
	}
	return nil
}

func storeQueries(ctx context.Context, d *store.DB, cfg StoreConfig, r *StoreResult, progress io.Writer) error {
	keys := benchKeyNames(cfg.Keys)
	now := time.Now().UTC()
	usage := make([]time.Duration, 0, cfg.Queries)
	logs := make([]time.Duration, 0, cfg.Queries)
	for i := range cfg.Queries {
		key := keys[(i*7919)%len(keys)]
		t0 := time.Now()
		pts, err := d.Usage(ctx, store.UsageQuery{Project: "bench", KeyID: key, From: now.Add(-30 * 24 * time.Hour), To: now, Granularity: store.Day})
		if err != nil {
			return err
		}
		if len(pts) == 0 {
			return fmt.Errorf("bench store: no usage for %s", key)
		}
		usage = append(usage, time.Since(t0))
		t0 = time.Now()
		page, err := d.Logs(ctx, store.LogQuery{Project: "bench", KeyID: key, StatusMin: 400, StatusMax: 499, Limit: 100})
		if err != nil {
			return err
		}
		if len(page.Events) == 0 {
			return fmt.Errorf("bench store: no logs for %s", key)
		}
		logs = append(logs, time.Since(t0))
	}
	slices.Sort(usage)
	slices.Sort(logs)
	pct := func(d []time.Duration, p float64) time.Duration { return d[int(float64(len(d)-1)*p)] }
	r.UsageP50, r.UsageP99 = pct(usage, 0.5), pct(usage, 0.99)
	r.LogsP50, r.LogsP99 = pct(logs, 0.5), pct(logs, 0.99)
	fmt.Fprintf(progress, "bench store: %d queries each: usage p50=%v p99=%v, logs p50=%v p99=%v\n", cfg.Queries, r.UsageP50, r.UsageP99, r.LogsP50, r.LogsP99)
	return nil
}

// Events fills b with events number off.. of total, spread evenly over
// span from start. The strings of a batch share one buffer, so generation
// costs little.
func Events(b []event.Event, off, keys int, start time.Time, span time.Duration, total int) {
	step := span / time.Duration(max(total, 1))
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
		if n/keys%50 == 0 { // 2% of each key's requests
			o, status = event.OutcomeRateLimited, 429
		}
		b[i] = event.Event{
			ID: id, Time: start.Add(step * time.Duration(n)).Truncate(time.Millisecond), Project: "bench",
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

// StoreDataset fills the store with rows events over span (ending now) for
// the query figures, generated inside the engine (INSERT … SELECT FROM
// numbers) rather than through InsertEvents, which a 100M-row dataset would
// take minutes to go through. Rollups are built day by day from the raw
// rows with the same pre-aggregation the store does.
func StoreDataset(ctx context.Context, d *store.DB, rows, keys int, span time.Duration, progress io.Writer) error {
	end := time.Now().UTC()
	start := end.Add(-span)
	stepUS := max(span.Microseconds()/int64(rows), 1)
	const chunk = 10_000_000
	for off := 0; off < rows; off += chunk {
		n := min(chunk, rows-off)
		p := store.Params{}.U64("off", uint64(off)).U64("n", uint64(n)).U64("keys", uint64(keys)).
			I64("start", start.UnixMicro()).I64("step", stepUS)
		err := d.Conn().Exec(ctx, onDB(d, `INSERT INTO {db}.requests (`+benchColumns+`)
SELECT fromUnixTimestamp64Micro(toInt64({start:Int64} + toInt64(number) * {step:Int64}), 'UTC') AS time,
 'bench', concat('key_', toString(number % {keys:UInt64})), concat('ev-', toString(number)),
 if(intDiv(number, {keys:UInt64}) % 50 = 0, 'rate_limited', 'valid'),
 concat('10.', toString((number % {keys:UInt64}) % 7), '.', toString(intDiv(number % {keys:UInt64}, 7) % 250), '.', toString(intDiv(number, {keys:UInt64}) % 4)),
 ['DE','US','FR','JP','BR','IN'][number % 6 + 1], 64500, 'GET', 'api.example.com',
 ['/v1/items','/v1/orders','/v1/users','/v1/search'][number % 4 + 1],
 if(intDiv(number, {keys:UInt64}) % 50 = 0, 429, 200), number % 5000, 200 + number % 100, 2000 + number % 1000,
 'loadgen/1', 'v1', 1
FROM numbers({off:UInt64}, {n:UInt64})`), p)
		if err != nil {
			return fmt.Errorf("bench dataset: %w", err)
		}
		fmt.Fprintf(progress, "bench store: dataset %d/%d raw rows, rss_mb=%.0f\n", off+n, rows, proc.RSSMB())
	}
	for day := start.Truncate(24 * time.Hour); day.Before(end); day = day.Add(24 * time.Hour) {
		p := store.Params{}.I64("from", day.Unix()).I64("to", day.Add(24*time.Hour).Unix())
		err := d.Conn().Exec(ctx, onDB(d, `INSERT INTO {db}.rollup_input (`+rollupInputColumns+`)
SELECT toStartOfMinute(time) AS minute, project, key_id, outcome, route, country, count(), sum(bytes_in), sum(bytes_out),
 sum(cost_units), groupUniqArray(xxHash64(client_ip))
FROM {db}.requests WHERE time >= toDateTime({from:Int64}, 'UTC') AND time < toDateTime({to:Int64}, 'UTC')
GROUP BY minute, project, key_id, outcome, route, country`), p)
		if err != nil {
			return fmt.Errorf("bench dataset rollups: %w", err)
		}
	}
	fmt.Fprintf(progress, "bench store: dataset rollups built, rss_mb=%.0f\n", proc.RSSMB())
	return nil
}

// onDB puts d's quoted database name in place of {db}.
func onDB(d *store.DB, sql string) string {
	return strings.ReplaceAll(sql, "{db}", "`"+d.Database()+"`")
}

const (
	benchColumns       = "time, project, key_id, event_id, outcome, client_ip, country, asn, method, host, route, status, latency_us, bytes_in, bytes_out, user_agent, verifier_id, cost_units"
	rollupInputColumns = "minute, project, key_id, outcome, route, country, requests, bytes_in, bytes_out, cost_units, ip_hashes"
)

// StoreQueries runs the query half of the benchmark on whatever the store holds.
func StoreQueries(ctx context.Context, d *store.DB, keys, queries int, progress io.Writer) (StoreResult, error) {
	r := StoreResult{}
	err := storeQueries(ctx, d, StoreConfig{Keys: keys, Queries: queries}, &r, progress)
	r.RSSMB = proc.PeakRSSMB()
	return r, err
}

func benchWarmup(ctx context.Context, d *store.DB, cfg StoreConfig, start time.Time) error {
	w, err := store.NewDB(d.Conn(), d.Database()+"_warmup")
	if err != nil {
		return err
	}
	if _, err := w.Migrate(ctx); err != nil {
		return err
	}
	if cfg.Rollups == store.RollupViews {
		if err := w.UseRollupViews(ctx); err != nil {
			return err
		}
	}
	b := make([]event.Event, min(cfg.Batch, cfg.Events))
	Events(b, 0, cfg.Keys, start, cfg.Span, cfg.Events)
	// The scratch database stays: DROP DATABASE … SYNC hung in chDB 26.5
	// right after the insert (measured), and the bench's data directory is
	// temporary unless --data-dir is given.
	return w.InsertEvents(ctx, "warmup-"+strconv.FormatInt(time.Now().UnixNano(), 36), b)
}

// RunStore migrates cfg.DB, runs StoreInsert, checks that every event is
// in the raw rows and the rollups, and prints events/s, peak RSS and CPU
// per event (and the query percentiles with cfg.Queries).
func RunStore(ctx context.Context, cfg StoreConfig) error {
	if cfg.Events <= 0 || cfg.Batch <= 0 || cfg.Keys <= 0 {
		return fmt.Errorf("bench store: events, batch and keys must be positive")
	}
	if _, err := cfg.DB.Migrate(ctx); err != nil {
		return err
	}
	cfg.logf("bench store: backend=%s rollups=%s events=%d batch=%d database=%s", cfg.Backend, cfg.Rollups, cfg.Events, cfg.Batch, cfg.DB.Database())
	r, err := StoreInsert(ctx, cfg)
	if err != nil {
		return err
	}
	if r.Stored != uint64(cfg.Events) || r.RollupSum != uint64(cfg.Events) {
		return fmt.Errorf("bench store: stored %d raw events and %d in the rollups, want %d", r.Stored, r.RollupSum, cfg.Events)
	}
	var sum Summary
	sum.Add("bench", "store")
	sum.Add("backend", cfg.Backend)
	sum.Add("rollups", string(cfg.Rollups))
	sum.Add("events", r.Events)
	sum.Add("batch", cfg.Batch)
	sum.Add("writers", max(cfg.Writers, 1))
	sum.Add("events_per_s", fmt.Sprintf("%.0f", r.EventsPerSec))
	sum.Add("rss_mb", fmt.Sprintf("%.0f", r.RSSMB))
	// CPU per event is steadier than events/s on a shared machine.
	sum.Add("cpu_ns_per_event", fmt.Sprintf("%.0f", float64(r.CPU.Nanoseconds())/float64(r.Events)))
	sum.Add("elapsed_s", fmt.Sprintf("%.2f", r.Elapsed.Seconds()))
	if cfg.Queries > 0 {
		sum.Add("usage_p50_ms", ms(r.UsageP50))
		sum.Add("usage_p99_ms", ms(r.UsageP99))
		sum.Add("logs_p50_ms", ms(r.LogsP50))
		sum.Add("logs_p99_ms", ms(r.LogsP99))
	}
	sum.Print(cfg.out())
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

// StoreQueryConfig is `keymeter bench query` (bench store --query-rows):
// query latencies over a generated history.
type StoreQueryConfig struct {
	DB      *store.DB // a database holding exactly Rows rows from an earlier run, or none
	Backend string    // for the summary
	Rows    int
	Keys    int
	Span    time.Duration // the history's length, ending now
	Queries int
	Output
}

// RunStoreQuery builds the dataset unless the database already holds it,
// then times per-key usage queries and filtered log pages.
func RunStoreQuery(ctx context.Context, cfg StoreQueryConfig) error {
	s := cfg.DB
	if cfg.Rows <= 0 || cfg.Keys <= 0 || cfg.Queries <= 0 {
		return fmt.Errorf("bench query: rows, keys and queries must be positive")
	}
	if _, err := s.Migrate(ctx); err != nil {
		return err
	}
	n, err := s.Count(ctx, "requests")
	if err != nil {
		return err
	}
	if n != uint64(cfg.Rows) {
		if n != 0 {
			return fmt.Errorf("bench store: database %s holds %d rows, not %d: use another --store-database", s.Database(), n, cfg.Rows)
		}
		t0 := time.Now()
		if err := StoreDataset(ctx, s, cfg.Rows, cfg.Keys, cfg.Span, cfg.progress()); err != nil {
			return err
		}
		cfg.logf("bench store: dataset of %d rows built in %v", cfg.Rows, time.Since(t0).Round(time.Second))
	}
	r, err := StoreQueries(ctx, s, cfg.Keys, cfg.Queries, cfg.progress())
	if err != nil {
		return err
	}
	var sum Summary
	sum.Add("bench", "store_query")
	sum.Add("backend", cfg.Backend)
	sum.Add("rows", cfg.Rows)
	sum.Add("keys", cfg.Keys)
	sum.Add("queries", cfg.Queries)
	sum.Add("usage_p50_ms", ms(r.UsageP50))
	sum.Add("usage_p99_ms", ms(r.UsageP99))
	sum.Add("logs_p50_ms", ms(r.LogsP50))
	sum.Add("logs_p99_ms", ms(r.LogsP99))
	sum.Add("rss_mb", fmt.Sprintf("%.0f", r.RSSMB))
	sum.Print(cfg.out())
	return nil
}
