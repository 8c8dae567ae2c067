package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// RollupMode is how the per-minute rollup is fed.
type RollupMode string

const (
	// RollupPreaggregated: InsertEvents folds each batch per minute in Go and
	// inserts the buckets (the default: ~3x faster, see README).
	RollupPreaggregated RollupMode = "preaggregated"
	// RollupViews: a materialized view over raw rows (kept for the benchmark).
	RollupViews RollupMode = "views"
)

// DB is the Store on ClickHouse SQL, shared by both backends: the backends
// differ only in their Conn.
type DB struct {
	conn     Conn
	database string
	q        string // quoted database name
	rollups  RollupMode
	closed   atomic.Bool
	// ahead is the insert PrepareInsert is encoding (one at a time).
	ahead struct {
		sync.Mutex
		p *preparedInsert
	}
}

// preparedInsert is an insert encoded ahead by PrepareInsert.
type preparedInsert struct {
	token  string
	first  *event.Event // the events, by identity: &events[0] and len
	n      int
	done   chan struct{}
	err    error
	ev, ru Prepared
}

func (p *preparedInsert) close() {
	<-p.done
	for _, x := range []Prepared{p.ev, p.ru} {
		if x != nil {
			_ = x.Close()
		}
	}
}

// PrepareInsert starts encoding InsertEvents(token, events) in the
// background, so that it overlaps whatever statement runs now; the
// InsertEvents call with the same token and the same slice (unchanged
// meanwhile) then only runs the statements. One insert is prepared at a
// time: a newer one replaces one never inserted. Backends that cannot
// prepare ignore it.
func (d *DB) PrepareInsert(token string, events []event.Event) {
	pc, ok := d.conn.(Preparer)
	if !ok || d.rollups == RollupViews || len(events) == 0 || !tokenRe.MatchString(token) || d.check() != nil {
		return
	}
	p := &preparedInsert{token: token, first: &events[0], n: len(events), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		rollup := make(chan []RollupRow, 1)
		go func() { rollup <- PreAggregate(events) }()
		p.ev, p.err = pc.PrepareEvents(d.database, token, events)
		rows := <-rollup
		if p.err == nil {
			p.ru, p.err = pc.PrepareRollup(d.database, token+"/1m", rows)
		}
	}()
	d.ahead.Lock()
	old := d.ahead.p
	d.ahead.p = p
	d.ahead.Unlock()
	if old != nil {
		go old.close()
	}
}

// takePrepared returns the prepared insert of token and events, if any.
func (d *DB) takePrepared(token string, events []event.Event) *preparedInsert {
	d.ahead.Lock()
	defer d.ahead.Unlock()
	p := d.ahead.p
	if p == nil || p.token != token || p.first != &events[0] || p.n != len(events) {
		return nil
	}
	d.ahead.p = nil
	return p
}

var _ Store = (*DB)(nil)

var databaseName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]{0,62}$`)

// ValidateDatabase checks a database name (it is the one identifier that
// goes into SQL text, so it is restricted to [A-Za-z_][A-Za-z0-9_]*).
func ValidateDatabase(name string) error {
	if !databaseName.MatchString(name) {
		return fmt.Errorf("store: database name %q: use letters, digits and _ (not starting with a digit), up to 63 characters", name)
	}
	return nil
}

// NewDB wraps a backend connection. It does not migrate.
func NewDB(conn Conn, database string) (*DB, error) {
	if database == "" {
		database = "keymeter"
	}
	if err := ValidateDatabase(database); err != nil {
		return nil, err
	}
	return &DB{conn: conn, database: database, q: "`" + database + "`", rollups: RollupPreaggregated}, nil
}

// Database is the database the store uses.
func (d *DB) Database() string { return d.database }

// Conn is the backend connection (for benchmarks and backend tests).
func (d *DB) Conn() Conn { return d.conn }

// UseRollupViews switches to feeding the per-minute rollup from a
// materialized view over raw rows instead of pre-aggregating in Go. Only the
// benchmark uses it; it creates the view.
func (d *DB) UseRollupViews(ctx context.Context) error {
	err := d.conn.Exec(ctx, d.sql(`CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.requests_1m_raw_mv TO {db}.requests_1m AS
SELECT toStartOfMinute(time) AS minute, project, key_id, outcome, route, country,
       count() AS requests, sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out,
       sum(toUInt64(cost_units)) AS cost_units,
       uniqState(xxHash64(client_ip)) AS uniq_ips, uniqState(toString(country)) AS uniq_countries
FROM {db}.requests
GROUP BY minute, project, key_id, outcome, route, country`), nil)
	if err == nil {
		d.rollups = RollupViews
	}
	return err
}

func (d *DB) sql(s string) string { return strings.ReplaceAll(s, "{db}", d.q) }

func (d *DB) check() error {
	if d.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Close closes the backend connection. It takes a context for the one
// Close(ctx) error shape of every role and adapter; closing the connection
// itself does not block.
func (d *DB) Close(ctx context.Context) error {
	if d.closed.Swap(true) {
		return nil
	}
	d.ahead.Lock()
	p := d.ahead.p
	d.ahead.p = nil
	d.ahead.Unlock()
	if p != nil {
		p.close()
	}
	return d.conn.Close()
}

var tokenRe = regexp.MustCompile(`^[\x21-\x7e]{1,256}$`)

// InsertEvents implements EventWriter.
func (d *DB) InsertEvents(ctx context.Context, token string, events []event.Event) error {
	if err := d.check(); err != nil {
		return err
	}
	if !tokenRe.MatchString(token) {
		return fmt.Errorf("%w: insert token %q must be 1-256 printable ASCII characters without spaces", ErrInvalidQuery, token)
	}
	if len(events) == 0 {
		return nil
	}
	if p := d.takePrepared(token, events); p != nil {
		defer p.close()
		<-p.done
		if p.err == nil {
			// As below: the rollup first, each insert deduplicated on its own.
			if err := p.ru.Exec(ctx); err != nil {
				return fmt.Errorf("store: insert rollup (token %s): %w", token, err)
			}
			if err := p.ev.Exec(ctx); err != nil {
				return fmt.Errorf("store: insert %d events (token %s): %w", len(events), token, err)
			}
			return nil
		}
		// Encoding ahead failed: insert the usual way (and report that).
	}
	if d.rollups == RollupViews {
		if err := d.conn.InsertEvents(ctx, d.database, token, events); err != nil {
			return fmt.Errorf("store: insert %d events (token %s): %w", len(events), token, err)
		}
		return nil
	}
	return d.insertRollupFirst(ctx, token, events)
}

// insertRollupFirst inserts the per-minute rollup of events (token
// token/1m), then the raw events (token): two deduplicated inserts, in
// that order, so that raw rows stored under a token mean its rollup is
// stored too. A consumer replaying an insert can then tell from the raw
// rows alone whether to insert anything (aggregator/resent.go); if the
// process dies between the two, the replay's rollup is dropped by its
// token and the raw rows go in. On a backend that prepares inserts, the
// raw rows are encoded while the rollup is folded and inserted.
func (d *DB) insertRollupFirst(ctx context.Context, token string, events []event.Event) error {
	var ev chan Prepared
	var evErr error
	if pc, ok := d.conn.(Preparer); ok {
		ev = make(chan Prepared, 1)
		go func() {
			p, err := pc.PrepareEvents(d.database, token, events)
			evErr = err
			ev <- p
		}()
	}
	if err := d.conn.InsertRollup(ctx, d.database, token+"/1m", PreAggregate(events)); err != nil {
		if ev != nil {
			if p := <-ev; p != nil {
				_ = p.Close()
			}
		}
		return fmt.Errorf("store: insert rollup (token %s): %w", token, err)
	}
	var err error
	if ev == nil {
		err = d.conn.InsertEvents(ctx, d.database, token, events)
	} else if p := <-ev; evErr != nil {
		err = evErr
	} else {
		err = p.Exec(ctx)
		_ = p.Close()
	}
	if err != nil {
		return fmt.Errorf("store: insert %d events (token %s): %w", len(events), token, err)
	}
	return nil
}

// RecordIntent implements IntentStore.
func (d *DB) RecordIntent(ctx context.Context, in Intent) error {
	return d.RecordIntents(ctx, []Intent{in})
}

// RecordIntents implements IntentStore: one statement (one part, all or
// nothing) for every intent of an insert. An intent whose State is
// IntentDone is written done (the clear of an earlier insert, carried in
// the same statement); any other is written pending.
func (d *DB) RecordIntents(ctx context.Context, ins []Intent) error {
	if err := d.check(); err != nil {
		return err
	}
	rows := make([]Intent, len(ins))
	for i, in := range ins {
		if in.Consumer == "" || in.Token == "" || in.Last < in.First {
			return fmt.Errorf("%w: intent needs a consumer, a token and first <= last", ErrInvalidQuery)
		}
		if in.State != IntentDone {
			in.State = IntentPending
		}
		rows[i] = in
	}
	return d.writeIntents(ctx, rows, "")
}

// ClearIntents implements IntentStore: it writes the done state of every
// intent in ins in one statement, without reading them first (ins are the
// intents as recorded, or as Intents returned them).
func (d *DB) ClearIntents(ctx context.Context, ins []Intent) error {
	if err := d.check(); err != nil {
		return err
	}
	return d.writeIntents(ctx, ins, IntentDone)
}

// intentRank orders the states of one intent whatever the time of the
// write: done beats aborted beats pending, so a late "aborted" from a
// fenced member never hides the insert a replay made, and a replay's
// "pending" never reopens a done range.
var intentRank = map[IntentState]uint64{IntentPending: 0, IntentAborted: 1, IntentDone: 2}

func (d *DB) writeIntent(ctx context.Context, in Intent, st IntentState) error {
	return d.writeIntents(ctx, []Intent{in}, st)
}

// writeIntents writes ins in state st as one INSERT: the rows travel as
// parallel Array(String) parameters, zipped and unrolled by arrayJoin. One
// statement per flush instead of one per partition: on chDB, which runs
// one statement at a time, per-partition intent statements cost about as
// much as the block insert itself.
func (d *DB) writeIntents(ctx context.Context, ins []Intent, st IntentState) error {
	if len(ins) == 0 {
		return nil
	}
	now := time.Now()
	n := len(ins)
	cs, ps, fs, ls, ts, ss, vs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	for i, in := range ins {
		rowSt := st
		if st == "" { // each intent's own state; none: pending
			rowSt = in.State
			if rowSt == "" {
				rowSt = IntentPending
			}
		}
		rank, ok := intentRank[rowSt]
		if !ok {
			return fmt.Errorf("%w: intent state %q", ErrInvalidQuery, rowSt)
		}
		cs[i], ps[i], ts[i], ss[i] = in.Consumer, in.Partition, in.Token, string(rowSt)
		fs[i], ls[i] = strconv.FormatUint(in.First, 10), strconv.FormatUint(in.Last, 10)
		vs[i] = strconv.FormatUint(rank<<56|uint64(now.UnixMicro()), 10)
	}
	p := Params{}.Arr("c", cs).Arr("p", ps).Arr("f", fs).Arr("l", ls).Arr("t", ts).Arr("s", ss).Arr("v", vs).Ms("u", now)
	err := d.conn.Exec(Quorum(ctx), d.sql(`INSERT INTO {db}.ingest_intents (consumer, partition, first_pos, last_pos, token, state, updated, version)
SELECT r.1, r.2, toUInt64(r.3), toUInt64(r.4), r.5, r.6, fromUnixTimestamp64Milli({u:Int64}, 'UTC'), toUInt64(r.7)
FROM (SELECT arrayJoin(arrayZip({c:Array(String)}, {p:Array(String)}, {f:Array(String)}, {l:Array(String)}, {t:Array(String)}, {s:Array(String)}, {v:Array(String)})) AS r)`), p)
	if err != nil {
		return fmt.Errorf("store: write %d intents of %s: %w", len(ins), ins[0].Consumer, err)
	}
	return nil
}

// Intents implements IntentStore.
func (d *DB) Intents(ctx context.Context, consumer string) ([]Intent, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	return d.intents(ctx, consumer, false)
}

// intents returns the pending intents, and the aborted ones too with
// aborted.
func (d *DB) intents(ctx context.Context, consumer string, aborted bool) ([]Intent, error) {
	states := "state = 'pending'"
	if aborted {
		states = "state IN ('pending', 'aborted')"
	}
	return d.queryIntents(ctx, states, Params{}.Str("c", consumer))
}

// Overlapping implements Fencer.
func (d *DB) Overlapping(ctx context.Context, consumer, partition string, first, last uint64) ([]Intent, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	return d.queryIntents(ctx, "partition = {p:String} AND last_pos >= {f:UInt64} AND first_pos <= {l:UInt64}",
		Params{}.Str("c", consumer).Str("p", partition).U64("f", first).U64("l", last))
}

func (d *DB) queryIntents(ctx context.Context, where string, p Params) ([]Intent, error) {
	rows, err := d.conn.Query(Consistent(ctx), d.sql(`SELECT consumer, partition, first_pos, last_pos, token, toString(state), toInt64(toUnixTimestamp64Milli(updated))
FROM {db}.ingest_intents FINAL WHERE consumer = {c:String} AND `+where+` ORDER BY partition, first_pos`), p)
	if err != nil {
		return nil, fmt.Errorf("store: read intents: %w", err)
	}
	defer rows.Close()
	var out []Intent
	for rows.Next() {
		var in Intent
		var st string
		var ms int64
		if err := rows.Scan(&in.Consumer, &in.Partition, &in.First, &in.Last, &in.Token, &st, &ms); err != nil {
			return nil, err
		}
		in.State, in.Updated = IntentState(st), msTime(ms)
		out = append(out, in)
	}
	return out, rows.Err()
}

// ClearIntent implements IntentStore. An aborted intent can be cleared
// too: a replay by the new owner inserted it after all.
func (d *DB) ClearIntent(ctx context.Context, consumer, partition, token string) error {
	if err := d.check(); err != nil {
		return err
	}
	ins, err := d.intents(ctx, consumer, true)
	if err != nil {
		return err
	}
	for _, in := range ins {
		if in.Partition == partition && in.Token == token {
			return d.writeIntent(ctx, in, IntentDone)
		}
	}
	return fmt.Errorf("%w: no pending intent %s/%s token %s", ErrNotFound, consumer, partition, token)
}

// AbortIntent implements Fencer: a pending intent becomes aborted (one
// already done or aborted stays).
func (d *DB) AbortIntent(ctx context.Context, consumer, partition, token string) error {
	if err := d.check(); err != nil {
		return err
	}
	ins, err := d.Intents(ctx, consumer)
	if err != nil {
		return err
	}
	for _, in := range ins {
		if in.Partition == partition && in.Token == token {
			return d.writeIntent(ctx, in, IntentAborted)
		}
	}
	return nil
}

// Fence implements Fencer. The fence is a row of ingest_intents under the
// consumer "<consumer>/fence" (consumer names cannot contain '/'), whose
// version is the epoch: the table keeps the highest.
func (d *DB) Fence(ctx context.Context, consumer string, epoch uint64) error {
	if err := d.check(); err != nil {
		return err
	}
	p := Params{}.Str("c", consumer+"/fence").U64("e", epoch).Ms("u", time.Now())
	err := d.conn.Exec(Quorum(ctx), d.sql(`INSERT INTO {db}.ingest_intents (consumer, partition, first_pos, last_pos, token, state, updated, version)
SELECT {c:String}, 'fence', {e:UInt64}, {e:UInt64}, 'fence', 'fence', fromUnixTimestamp64Milli({u:Int64}, 'UTC'), {e:UInt64}`), p)
	if err != nil {
		return fmt.Errorf("store: fence %s at %d: %w", consumer, epoch, err)
	}
	return nil
}

// MaxFence implements Fencer: the highest epoch fenced (0: none).
func (d *DB) MaxFence(ctx context.Context, consumer string) (uint64, error) {
	if err := d.check(); err != nil {
		return 0, err
	}
	rows, err := d.conn.Query(Consistent(ctx), d.sql(`SELECT toUInt64(max(first_pos)) FROM {db}.ingest_intents WHERE consumer = {c:String}`),
		Params{}.Str("c", consumer+"/fence"))
	if err != nil {
		return 0, fmt.Errorf("store: fence of %s: %w", consumer, err)
	}
	defer rows.Close()
	var e uint64
	if rows.Next() {
		if err := rows.Scan(&e); err != nil {
			return 0, err
		}
	}
	return e, rows.Err()
}

// MaxUsagePoints bounds one usage answer.
const MaxUsagePoints = 100_000

// Usage implements UsageReader.
func (d *DB) Usage(ctx context.Context, q UsageQuery) ([]UsagePoint, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	table, col, bucket := "requests_1m", "minute", "minute"
	lo, hi := "toDateTime({from:Int64}, 'UTC')", "toDateTime({to:Int64}, 'UTC')"
	switch q.Granularity {
	case Hour:
		bucket = "toStartOfHour(minute)"
	case Day, Month:
		table, col, bucket = "requests_1d", "day", "toDateTime(day, 'UTC')"
		lo, hi = "toDate(toDateTime({from:Int64}, 'UTC'))", "toDate(toDateTime({to:Int64} - 1, 'UTC')) + 1"
		if q.Granularity == Month {
			bucket = "toDateTime(toStartOfMonth(day), 'UTC')"
		}
	}
	// The rollups' DateTime holds 1970 to 2106: no bucket lies outside.
	clamp := func(t time.Time) int64 { return min(max(t.Unix(), 0), math.MaxUint32) }
	p := Params{}.I64("from", clamp(q.From)).I64("to", clamp(q.To))
	where := []string{col + " >= " + lo, col + " < " + hi}
	if q.Project != "" {
		where = append(where, "project = {project:String}")
		p = p.Str("project", q.Project)
	}
	if q.KeyID != "" {
		where = append(where, "key_id = {key:String}")
		p = p.Str("key", q.KeyID)
	}
	dims := []string{"''", "''", "''"}
	groups := []string{"b"}
	for i, g := range groupByFields {
		if slices.Contains(q.GroupBy, g) {
			dims[i] = "toString(" + g + ")"
			groups = append(groups, g)
		}
	}
	sql := `SELECT toInt64(toUnixTimestamp(` + bucket + `)) AS b, ` + strings.Join(dims, ", ") + `,
 toUInt64(sum(requests)), toUInt64(sumIf(requests, outcome = 'valid')), toUInt64(sum(bytes_in)), toUInt64(sum(bytes_out)),
 toUInt64(sum(cost_units)), toUInt64(uniqMerge(uniq_ips)), toUInt64(uniqMerge(uniq_countries))
FROM {db}.` + table + ` WHERE ` + strings.Join(where, " AND ") + `
GROUP BY ` + strings.Join(groups, ", ") + ` ORDER BY ` + strings.Join(groups, ", ") + ` LIMIT ` + strconv.Itoa(MaxUsagePoints+1)
	rows, err := d.conn.Query(ctx, d.sql(sql), p)
	if err != nil {
		return nil, fmt.Errorf("store: usage: %w", err)
	}
	defer rows.Close()
	var out []UsagePoint
	for rows.Next() {
		var u UsagePoint
		var b int64
		if err := rows.Scan(&b, &u.Outcome, &u.Route, &u.Country, &u.Requests, &u.Allowed, &u.BytesIn, &u.BytesOut, &u.CostUnits, &u.UniqueIPs, &u.Countries); err != nil {
			return nil, err
		}
		u.Start = time.Unix(b, 0).UTC()
		out = append(out, u)
		if len(out) > MaxUsagePoints {
			return nil, badFilter("granularity", string(q.Granularity), fmt.Sprintf("more than %d points", MaxUsagePoints),
				"a shorter range, a coarser granularity or fewer group_by fields")
		}
	}
	return out, rows.Err()
}

// QuotaUsage implements UsageReader. Whole days come from the daily rollup,
// a partial first day from the per-minute one.
func (d *DB) QuotaUsage(ctx context.Context, keyID string, periodStart time.Time) (QuotaUsage, error) {
	var qu QuotaUsage
	if keyID == "" {
		return qu, errNoIdentity
	}
	if err := d.check(); err != nil {
		return qu, err
	}
	periodStart = periodStart.UTC()
	day := periodStart.Truncate(24 * time.Hour)
	if !day.Equal(periodStart) {
		day = day.Add(24 * time.Hour)
		p := Params{}.Str("k", keyID).I64("from", periodStart.Unix()).I64("to", day.Unix())
		if err := d.sumQuota(ctx, &qu, `SELECT toUInt64(sum(requests)), toUInt64(sumIf(requests, outcome = 'valid')), toUInt64(sumIf(cost_units, outcome = 'valid'))
FROM {db}.requests_1m WHERE key_id = {k:String} AND minute >= toDateTime({from:Int64}, 'UTC') AND minute < toDateTime({to:Int64}, 'UTC')`, p); err != nil {
			return qu, err
		}
	}
	p := Params{}.Str("k", keyID).I64("from", day.Unix())
	err := d.sumQuota(ctx, &qu, `SELECT toUInt64(sum(requests)), toUInt64(sumIf(requests, outcome = 'valid')), toUInt64(sumIf(cost_units, outcome = 'valid'))
FROM {db}.requests_1d WHERE key_id = {k:String} AND day >= toDate(toDateTime({from:Int64}, 'UTC'))`, p)
	return qu, err
}

func (d *DB) sumQuota(ctx context.Context, qu *QuotaUsage, sql string, p Params) error {
	rows, err := d.conn.Query(ctx, d.sql(sql), p)
	if err != nil {
		return fmt.Errorf("store: quota usage: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r, a, c uint64
		if err := rows.Scan(&r, &a, &c); err != nil {
			return err
		}
		qu.Requests += r
		qu.Allowed += a
		qu.CostUnits += c
	}
	return rows.Err()
}

// Baselines implements UsageReader.
func (d *DB) Baselines(ctx context.Context, q BaselineQuery) ([]Baseline, error) {
	if q.From.IsZero() || q.To.IsZero() || !q.From.Before(q.To) {
		return nil, badFilter("from", "", "from and to are required and from must be before to", "")
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	p := Params{}.I64("from", q.From.Unix()).I64("to", q.To.Unix())
	where := "minute >= toDateTime({from:Int64}, 'UTC') AND minute < toDateTime({to:Int64}, 'UTC') AND key_id != ''"
	if q.Project != "" {
		where += " AND project = {project:String}"
		p = p.Str("project", q.Project)
	}
	if q.KeyID != "" {
		where += " AND key_id = {key:String}"
		p = p.Str("key", q.KeyID)
	}
	rows, err := d.conn.Query(ctx, d.sql(`SELECT toString(project), key_id, toUInt64(sum(r)), toUInt64(count()), toFloat64(quantileExact(0.99)(r)), toUInt64(max(r))
FROM (SELECT project, key_id, minute, sum(requests) AS r FROM {db}.requests_1m WHERE `+where+` GROUP BY project, key_id, minute)
GROUP BY project, key_id ORDER BY project, key_id`), p)
	if err != nil {
		return nil, fmt.Errorf("store: baselines: %w", err)
	}
	defer rows.Close()
	minutes := q.To.Sub(q.From).Minutes()
	var out []Baseline
	for rows.Next() {
		var b Baseline
		if err := rows.Scan(&b.Project, &b.KeyID, &b.Requests, &b.ActiveMinutes, &b.P99PerMinute, &b.MaxPerMinute); err != nil {
			return nil, err
		}
		b.MeanPerMinute = float64(b.Requests) / minutes
		out = append(out, b)
	}
	return out, rows.Err()
}

const logColumns = `toInt64(toUnixTimestamp64Milli(time)), toString(project), key_id, event_id, toString(outcome), client_ip,
 toString(country), toUInt64(asn), toString(method), toString(host), toString(route), toUInt64(status), toUInt64(latency_us),
 bytes_in, bytes_out, user_agent, toString(verifier_id), toUInt64(cost_units)`

// scanEvent reads one row of logColumns.
func scanEvent(rows Rows) (event.Event, error) {
	var e event.Event
	var ms int64
	var outcome string
	var asn, status, lat, cost uint64
	if err := rows.Scan(&ms, &e.Project, &e.KeyID, &e.ID, &outcome, &e.ClientIP, &e.Country, &asn, &e.Method, &e.Host,
		&e.Route, &status, &lat, &e.BytesIn, &e.BytesOut, &e.UserAgent, &e.VerifierID, &cost); err != nil {
		return e, err
	}
	e.Time = time.UnixMilli(ms).UTC()
	e.Outcome, _ = event.ParseOutcome(outcome)
	e.ASN, e.Status, e.LatencyUS, e.CostUnits = uint32(asn), uint16(status), uint32(lat), uint32(cost)
	return e, nil
}

// lastAddr is the highest address of a masked prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Logs implements LogReader.
func (d *DB) Logs(ctx context.Context, q LogQuery) (LogPage, error) {
	var page LogPage
	if err := q.Validate(); err != nil {
		return page, err
	}
	if err := d.check(); err != nil {
		return page, err
	}
	limit := q.Limit
	if limit == 0 {
		limit = 100
	}
	sql, p := logsSQL(q, limit)
	rows, err := d.conn.Query(ctx, d.sql(sql), p)
	if err != nil {
		return page, fmt.Errorf("store: logs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return page, err
		}
		page.Events = append(page.Events, e)
	}
	if err := rows.Err(); err != nil {
		return page, err
	}
	if len(page.Events) > limit {
		page.Events = page.Events[:limit]
		last := page.Events[limit-1]
		page.Next = encodeCursor(last.Time.UnixMilli(), last.ID)
	}
	return page, nil
}

// logsSQL is the statement of a page of q (limit rows, and one more to
// tell whether there is a next page), with its parameters.
func logsSQL(q LogQuery, limit int) (string, Params) {
	where, p := logsWhere(q)
	sql := "SELECT " + logColumns + " FROM {db}.requests"
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY time DESC, event_id DESC LIMIT {limit:UInt32}"
	if q.KeyID != "" {
		// One key's rows are few: reading them whole beats reading every
		// part in time order and merging (100M rows, 10k keys: 35 vs 188 ms
		// for a page, 84 vs 98 ms with a 2% status filter, measured).
		sql += " SETTINGS optimize_read_in_order = 0"
	}
	return sql, p.U64("limit", uint64(limit+1))
}

// logsWhere are the conditions of q's filters and cursor, with their
// parameters.
func logsWhere(q LogQuery) ([]string, Params) {
	var where []string
	var p Params
	add := func(cond, name, v string) {
		if v != "" {
			where = append(where, cond)
			p = p.Str(name, v)
		}
	}
	add("project = {project:String}", "project", q.Project)
	add("key_id = {key:String}", "key", q.KeyID)
	add("outcome = {outcome:String}", "outcome", q.Outcome)
	add("route = {route:String}", "route", q.Route)
	add("country = {country:String}", "country", q.Country)
	if q.ClientIP != "" {
		// An event's client_ip may be empty (an unknown address, which
		// POST /v1/events accepts): it matches no address or network. The
		// range test converts without throwing (NULL never matches), so
		// one empty or odd row cannot fail the search.
		if pre, err := netip.ParsePrefix(q.ClientIP); err == nil {
			pre = pre.Masked()
			lo, hi := pre.Addr(), lastAddr(pre)
			if pre.Addr().Is4() {
				where = append(where, "toIPv4OrNull(client_ip) BETWEEN toIPv4({lo:String}) AND toIPv4({hi:String})")
			} else {
				where = append(where, "isIPv6String(client_ip) AND toIPv6OrNull(client_ip) BETWEEN toIPv6({lo:String}) AND toIPv6({hi:String})")
			}
			p = p.Str("lo", lo.String()).Str("hi", hi.String())
		} else {
			add("client_ip = {ip:String}", "ip", q.ClientIP)
		}
	}
	if q.StatusMin != 0 {
		where = append(where, "status BETWEEN {smin:UInt16} AND {smax:UInt16}")
		p = p.U64("smin", uint64(q.StatusMin)).U64("smax", uint64(q.StatusMax))
	}
	if !q.From.IsZero() {
		where = append(where, "time >= fromUnixTimestamp64Milli({from:Int64}, 'UTC')")
		p = p.Ms("from", q.From)
	}
	if !q.To.IsZero() {
		where = append(where, "time < fromUnixTimestamp64Milli({to:Int64}, 'UTC')")
		p = p.Ms("to", q.To)
	}
	if q.Cursor != "" {
		ms, id, _ := decodeCursor(q.Cursor)
		where = append(where, "(time, event_id) < (fromUnixTimestamp64Milli({cms:Int64}, 'UTC'), {cid:String})")
		p = p.I64("cms", ms).Str("cid", id)
	}
	return where, p
}

// DecisionCursor is the cursor that continues after d (newest first).
func DecisionCursor(d Decision) string { return encodeCursor(d.Time.UnixMilli(), d.ID) }

// WriteDecisions implements DecisionStore. Decisions are few; one statement each.
func (d *DB) WriteDecisions(ctx context.Context, ds []Decision) error {
	if err := d.check(); err != nil {
		return err
	}
	for _, x := range ds {
		if x.ID == "" || x.RuleID == "" {
			return fmt.Errorf("%w: a decision needs an id and a rule id", ErrInvalidQuery)
		}
		p := Params{}.Str("id", x.ID).Ms("t", x.Time).Str("rule", x.RuleID).U64("rv", uint64(x.RuleVersion)).
			Str("mode", x.Mode).Str("action", x.Action).Str("project", x.Project).Str("key", x.KeyID).
			Str("ip", x.ClientIP).Str("group", x.GroupKey).Str("reason", x.Reason).Str("ev", x.Evidence)
		err := d.conn.Exec(ctx, d.sql(`INSERT INTO {db}.decisions (id, time, rule_id, rule_version, mode, action, project, key_id, client_ip, group_key, reason, evidence)
SELECT {id:String}, fromUnixTimestamp64Milli({t:Int64}, 'UTC'), {rule:String}, {rv:UInt32}, {mode:String}, {action:String},
 {project:String}, {key:String}, {ip:String}, {group:String}, {reason:String}, {ev:String}`), p)
		if err != nil {
			return fmt.Errorf("store: write decision %s: %w", x.ID, err)
		}
	}
	return nil
}

// Decisions implements DecisionStore.
func (d *DB) Decisions(ctx context.Context, q DecisionQuery) ([]Decision, error) {
	page, err := newNewestFirst(q.Limit, q.From, q.To, q.Cursor,
		badFilter("cursor", "", "not a cursor this server issued", "the next of a previous page"))
	if err != nil {
		return nil, err
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	page.eq("project", "project", q.Project)
	page.eq("key_id", "key", q.KeyID)
	page.eq("rule_id", "rule", q.RuleID)
	rows, err := d.conn.Query(ctx, d.sql(`SELECT id, toInt64(toUnixTimestamp64Milli(time)), toString(rule_id), toUInt64(rule_version), toString(mode), toString(action),
 toString(project), key_id, client_ip, group_key, reason, evidence
FROM {db}.decisions FINAL WHERE `+page.whereSQL()+` ORDER BY time DESC, id DESC LIMIT {limit:UInt32}`), page.p)
	if err != nil {
		return nil, fmt.Errorf("store: decisions: %w", err)
	}
	defer rows.Close()
	var out []Decision
	for rows.Next() {
		var x Decision
		var ms int64
		var rv uint64
		if err := rows.Scan(&x.ID, &ms, &x.RuleID, &rv, &x.Mode, &x.Action, &x.Project, &x.KeyID, &x.ClientIP, &x.GroupKey, &x.Reason, &x.Evidence); err != nil {
			return nil, err
		}
		x.Time, x.RuleVersion = msTime(ms), uint32(rv)
		out = append(out, x)
	}
	return out, rows.Err()
}

// UpsertKeys implements KeyMirror.
func (d *DB) UpsertKeys(ctx context.Context, ks []KeyRecord) error {
	if err := d.check(); err != nil {
		return err
	}
	for _, k := range ks {
		if k.ID == "" {
			return fmt.Errorf("%w: a key record needs an id", ErrInvalidQuery)
		}
		p := Params{}.Str("id", k.ID).Str("project", k.Project).Str("name", k.Name).Str("owner", k.Owner).
			Str("env", k.Env).Str("display", k.Display).Str("state", k.State).Ms("created", k.Created).
			Ms("expires", k.Expires).Ms("revoked", k.Revoked).Str("reason", k.RevokeReason).
			Arr("scopes", k.Scopes).Arr("cidrs", k.AllowedCIDRs).U64("rate", uint64(k.RateLimit)).
			U64("quota", k.MonthlyQuota).Str("replaces", k.Replaces).Str("meta", k.Metadata).U64("version", k.Version)
		err := d.conn.Exec(ctx, d.sql(`INSERT INTO {db}.keys (id, project, name, owner, env, display, state, created, expires, revoked, revoke_reason, scopes, allowed_cidrs, rate_limit, monthly_quota, replaces, metadata, version)
SELECT {id:String}, {project:String}, {name:String}, {owner:String}, {env:String}, {display:String}, {state:String},
 fromUnixTimestamp64Milli({created:Int64}, 'UTC'), fromUnixTimestamp64Milli({expires:Int64}, 'UTC'), fromUnixTimestamp64Milli({revoked:Int64}, 'UTC'),
 {reason:String}, {scopes:Array(String)}, {cidrs:Array(String)}, {rate:UInt32}, {quota:UInt64}, {replaces:String}, {meta:String}, {version:UInt64}`), p)
		if err != nil {
			return fmt.Errorf("store: upsert key %s: %w", k.ID, err)
		}
	}
	return nil
}

const keyColumns = `id, toString(project), name, owner, toString(env), display, toString(state),
 toInt64(toUnixTimestamp64Milli(created)), toInt64(toUnixTimestamp64Milli(expires)), toInt64(toUnixTimestamp64Milli(revoked)),
 revoke_reason, scopes, allowed_cidrs, toUInt64(rate_limit), monthly_quota, replaces, metadata, version`

func scanKey(rows Rows) (KeyRecord, error) {
	var k KeyRecord
	var c, e, r int64
	var rate uint64
	err := rows.Scan(&k.ID, &k.Project, &k.Name, &k.Owner, &k.Env, &k.Display, &k.State, &c, &e, &r,
		&k.RevokeReason, &k.Scopes, &k.AllowedCIDRs, &rate, &k.MonthlyQuota, &k.Replaces, &k.Metadata, &k.Version)
	k.Created, k.Expires, k.Revoked, k.RateLimit = msTime(c), msTime(e), msTime(r), uint32(rate)
	return k, err
}

// Key implements KeyMirror.
func (d *DB) Key(ctx context.Context, id string) (KeyRecord, error) {
	if err := d.check(); err != nil {
		return KeyRecord{}, err
	}
	rows, err := d.conn.Query(ctx, d.sql(`SELECT `+keyColumns+` FROM {db}.keys FINAL WHERE id = {id:String}`), Params{}.Str("id", id))
	if err != nil {
		return KeyRecord{}, fmt.Errorf("store: key: %w", err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return KeyRecord{}, err
		}
		return KeyRecord{}, fmt.Errorf("%w: key %s", ErrNotFound, id)
	}
	return scanKey(rows)
}

// Keys implements KeyMirror.
func (d *DB) Keys(ctx context.Context, project string) ([]KeyRecord, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	rows, err := d.conn.Query(ctx, d.sql(`SELECT `+keyColumns+` FROM {db}.keys FINAL WHERE project = {p:String} ORDER BY id`), Params{}.Str("p", project))
	if err != nil {
		return nil, fmt.Errorf("store: keys: %w", err)
	}
	defer rows.Close()
	var out []KeyRecord
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// SetRetention implements Admin.
func (d *DB) SetRetention(ctx context.Context, days int) error {
	if days < 1 || days > 3650 {
		return fmt.Errorf("%w: retention %d days: accepted 1-3650", ErrInvalidQuery, days)
	}
	if err := d.check(); err != nil {
		return err
	}
	// days is a validated integer, not user text: DDL takes no parameters.
	return d.conn.Exec(ctx, d.sql(`ALTER TABLE {db}.requests MODIFY TTL toDateTime(time) + INTERVAL `+strconv.Itoa(days)+` DAY`), nil)
}

var ttlDays = regexp.MustCompile(`TTL toDateTime\(time\) \+ (?:INTERVAL (\d+) DAY|toIntervalDay\((\d+)\))`)

// Retention implements Admin.
func (d *DB) Retention(ctx context.Context) (int, error) {
	if err := d.check(); err != nil {
		return 0, err
	}
	rows, err := d.conn.Query(ctx, `SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = 'requests'`, Params{}.Str("d", d.database))
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	if !rows.Next() {
		return 0, fmt.Errorf("%w: table requests (run keymeter migrate up)", ErrNotFound)
	}
	var s string
	if err := rows.Scan(&s); err != nil {
		return 0, err
	}
	m := ttlDays.FindStringSubmatch(s)
	if m == nil {
		return 0, errors.New("store: requests has no TTL")
	}
	return strconv.Atoi(m[1] + m[2])
}

var countable = []string{"requests", "requests_1m", "requests_1d", "ingest_intents", "decisions", "keys", "schema_migrations"}

// Count implements Admin.
func (d *DB) Count(ctx context.Context, table string) (uint64, error) {
	if !slices.Contains(countable, table) {
		return 0, fmt.Errorf("%w: table %q (accepted: %s)", ErrInvalidQuery, table, strings.Join(countable, ", "))
	}
	if err := d.check(); err != nil {
		return 0, err
	}
	rows, err := d.conn.Query(ctx, d.sql(`SELECT toUInt64(count()) FROM {db}.`+table), nil)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var n uint64
	if rows.Next() {
		err = rows.Scan(&n)
	}
	if err == nil {
		err = rows.Err()
	}
	return n, err
}

// Stats implements Admin.
func (d *DB) Stats(ctx context.Context) ([]TableStats, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	rows, err := d.conn.Query(ctx, `SELECT table, toUInt64(sum(rows)), toUInt64(sum(bytes_on_disk)) FROM system.parts
WHERE database = {d:String} AND active GROUP BY table ORDER BY table`, Params{}.Str("d", d.database))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []TableStats
	for rows.Next() {
		var t TableStats
		if err := rows.Scan(&t.Table, &t.Rows, &t.Bytes); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}
