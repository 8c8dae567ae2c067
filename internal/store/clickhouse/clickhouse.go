// Package clickhouse is the server backend of the store: a ClickHouse server
// or cluster over clickhouse-go's native protocol. Inserts are PrepareBatch
// blocks with the deduplication token as a per-insert setting; every call
// has a deadline; a lost connection is retried with backoff.
//
// Minimum production server: ClickHouse 23.8 (query parameters in {x:Type}
// form, insert_deduplication_token, DateTime64, TTL, deduplication of
// dependent materialized views). Older servers can connect and insert
// (Debian's 18.16 is used in tests for connection handling) but cannot run
// the schema.
package clickhouse

import (
	"context"
	sqldriver "database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// MinServerVersion is the oldest server the full store supports.
const MinServerVersion = "23.8"

// Config configures the server backend.
type Config struct {
	// DSN: clickhouse://user:password@host:9000/database?dial_timeout=5s
	DSN string
	// Database overrides the DSN's database (default "keymeter").
	Database string
	// Timeout bounds every call that has no earlier deadline (default 30s).
	Timeout time.Duration
	// Retries of a call that lost its connection (default 5), with
	// exponential backoff from 100ms up to 3s.
	Retries int
}

// Validate checks the config.
func (c Config) Validate() error {
	if c.DSN == "" {
		return errors.New("clickhouse: a DSN is required (e.g. clickhouse://127.0.0.1:9000/keymeter)")
	}
	if _, err := ch.ParseDSN(c.DSN); err != nil {
		// Not %w: the parser's message may quote the DSN, password and all.
		return fmt.Errorf("clickhouse: DSN %s is not valid (want clickhouse://user:password@host:9000/database)", redactDSN(c.DSN))
	}
	if c.Database != "" {
		return store.ValidateDatabase(c.Database)
	}
	return nil
}

// ErrServerTooOld: the server lacks what the schema needs.
var ErrServerTooOld = errors.New("clickhouse: server too old")

// Open connects, checks the server version and returns a store. It does
// not migrate.
func Open(ctx context.Context, cfg Config) (*store.DB, error) {
	c, err := Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	v, err := c.ServerVersion(ctx)
	if err != nil {
		c.Close()
		return nil, err
	}
	if !AtLeast(v, MinServerVersion) {
		c.Close()
		return nil, fmt.Errorf("%w: %s is %s; keymeter needs %s or newer (query parameters, DateTime64, TTL, insert_deduplication_token)", ErrServerTooOld, redactDSN(cfg.DSN), v, MinServerVersion)
	}
	db := cfg.Database
	if db == "" {
		db = c.database
	}
	s, err := store.NewDB(c, db)
	if err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

// Conn is a store.Conn on clickhouse-go.
type Conn struct {
	conn     driver.Conn
	database string
	timeout  time.Duration
	retries  int
	// replicated: the server knows the consistency settings of
	// store.Consistency as sent (see consistency.go).
	replicated bool
}

var _ store.Conn = (*Conn)(nil)

// Dial opens a connection pool and checks it with a ping.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opt, _ := ch.ParseDSN(cfg.DSN)
	if opt.DialTimeout == 0 || opt.DialTimeout > 10*time.Second {
		opt.DialTimeout = 5 * time.Second
	}
	if opt.ReadTimeout == 0 {
		opt.ReadTimeout = 60 * time.Second
	}
	opt.Compression = &ch.Compression{Method: ch.CompressionLZ4}
	database := opt.Auth.Database
	if database == "" || database == "default" {
		database = "keymeter"
	}
	// The pool connects to the server's default database: the store's
	// database may not exist yet (migrate creates it); SQL names it.
	opt.Auth.Database = ""
	conn, err := ch.Open(opt)
	if err != nil {
		return nil, fmt.Errorf("clickhouse: open: %w", err)
	}
	c := &Conn{conn: conn, database: database, timeout: cfg.Timeout, retries: cfg.Retries}
	if c.timeout <= 0 {
		c.timeout = 30 * time.Second
	}
	if c.retries <= 0 {
		c.retries = 5
	}
	if err := c.retry(ctx, func(ctx context.Context) error { return conn.Ping(ctx) }); err != nil {
		conn.Close()
		return nil, fmt.Errorf("clickhouse: ping %v: %w", opt.Addr, err)
	}
	c.replicated = consistencySupported(conn)
	return c, nil
}

// AtLeast compares "major.minor[.patch]" versions by major and minor.
func AtLeast(v, min string) bool {
	a, b := strings.Split(v, "."), strings.Split(min, ".")
	for i := 0; i < 2; i++ {
		var x, y int
		if i < len(a) {
			x, _ = strconv.Atoi(a[i])
		}
		if i < len(b) {
			y, _ = strconv.Atoi(b[i])
		}
		if x != y {
			return x > y
		}
	}
	return true
}

// Backend implements store.Conn.
func (c *Conn) Backend() string { return "clickhouse" }

// Close implements store.Conn.
func (c *Conn) Close() error { return c.conn.Close() }

// ServerVersion is the server's version, e.g. "18.16.1".
func (c *Conn) ServerVersion(ctx context.Context) (string, error) {
	var v string
	err := c.retry(ctx, func(ctx context.Context) error {
		sv, err := c.conn.ServerVersion()
		if err == nil {
			v = fmt.Sprintf("%d.%d.%d", sv.Version.Major, sv.Version.Minor, sv.Version.Patch)
		}
		return err
	})
	return v, err
}

// Driver exposes clickhouse-go for backend tests.
func (c *Conn) Driver() driver.Conn { return c.conn }

// isConnErr reports a lost or refused connection: worth a retry.
func isConnErr(err error) bool {
	if err == nil {
		return false
	}
	var oe *net.OpError
	return errors.Is(err, sqldriver.ErrBadConn) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.As(err, &oe)
}

// retry runs fn under the call deadline, again with backoff while the
// connection is lost. Every call is safe to repeat: reads, idempotent DDL,
// and inserts deduplicated by their token.
func (c *Conn) retry(ctx context.Context, fn func(context.Context) error) error {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	return c.retryIn(ctx, fn)
}

// deadline gives ctx the call timeout unless it has an earlier deadline.
func (c *Conn) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

func (c *Conn) retryIn(ctx context.Context, fn func(context.Context) error) error {
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := fn(ctx)
		if !isConnErr(err) || attempt >= c.retries {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up reconnecting: %v)", err, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 3*time.Second)
	}
}

func withParams(ctx context.Context, p store.Params, settings ch.Settings) context.Context {
	var opts []ch.QueryOption
	if len(p) > 0 {
		m := make(ch.Parameters, len(p))
		for _, x := range p {
			m[x.Name] = x.Text()
		}
		opts = append(opts, ch.WithParameters(m))
	}
	if len(settings) > 0 {
		opts = append(opts, ch.WithSettings(settings))
	}
	if len(opts) == 0 {
		return ctx
	}
	return ch.Context(ctx, opts...)
}

// Exec implements store.Conn.
func (c *Conn) Exec(ctx context.Context, q string, p store.Params) error {
	return c.retry(ctx, func(ctx context.Context) error {
		return c.conn.Exec(withParams(ctx, p, consistencySettings(ctx, c.replicated)), q)
	})
}

// Query implements store.Conn. The deadline covers reading the rows too;
// only starting the query is retried.
func (c *Conn) Query(ctx context.Context, q string, p store.Params) (store.Rows, error) {
	ctx, cancel := c.deadline(ctx)
	var rows driver.Rows
	err := c.retryIn(ctx, func(ctx context.Context) error {
		var err error
		rows, err = c.conn.Query(withParams(ctx, p, consistencySettings(ctx, c.replicated)), q)
		return err
	})
	if err != nil {
		cancel()
		return nil, err
	}
	return &cancelRows{Rows: rows, cancel: cancel}, nil
}

type cancelRows struct {
	driver.Rows
	cancel context.CancelFunc
}

func (r *cancelRows) Close() error {
	err := r.Rows.Close()
	r.cancel()
	return err
}

func insertSettings(token string) ch.Settings {
	return ch.Settings{
		"insert_deduplication_token":                         token,
		"deduplicate_blocks_in_dependent_materialized_views": 1,
		"async_insert": 0,
	}
}

const eventColumns = "time, project, key_id, event_id, outcome, client_ip, country, asn, method, host, route, status, latency_us, bytes_in, bytes_out, user_agent, verifier_id, cost_units"

// InsertEvents implements store.Conn: one block, one token.
func (c *Conn) InsertEvents(ctx context.Context, database, token string, events []event.Event) error {
	if err := store.ValidateDatabase(database); err != nil {
		return err
	}
	return c.retry(ctx, func(ctx context.Context) error {
		b, err := c.conn.PrepareBatch(withParams(ctx, nil, insertSettings(token)), "INSERT INTO `"+database+"`.requests ("+eventColumns+")")
		if err != nil {
			return err
		}
		defer b.Close()
		// In the table's sort order: the server then skips sorting the block.
		for _, i := range store.SortOrder(events) {
			e := &events[i]
			if err := b.Append(e.Time, e.Project, e.KeyID, e.ID, e.Outcome.String(), e.ClientIP, e.Country, e.ASN,
				e.Method, e.Host, e.Route, e.Status, e.LatencyUS, e.BytesIn, e.BytesOut, e.UserAgent, e.VerifierID, e.CostUnits); err != nil {
				return err
			}
		}
		return b.Send()
	})
}

const rollupColumns = "minute, project, key_id, outcome, route, country, requests, bytes_in, bytes_out, cost_units, ip_hashes"

// InsertRollup implements store.Conn.
func (c *Conn) InsertRollup(ctx context.Context, database, token string, rows []store.RollupRow) error {
	if len(rows) == 0 {
		return nil
	}
	if err := store.ValidateDatabase(database); err != nil {
		return err
	}
	return c.retry(ctx, func(ctx context.Context) error {
		b, err := c.conn.PrepareBatch(withParams(ctx, nil, insertSettings(token)), "INSERT INTO `"+database+"`.rollup_input ("+rollupColumns+")")
		if err != nil {
			return err
		}
		defer b.Close()
		for i := range rows {
			r := &rows[i]
			if err := b.Append(time.Unix(int64(r.Minute), 0).UTC(), r.Project, r.KeyID, r.Outcome, r.Route, r.Country,
				r.Requests, r.BytesIn, r.BytesOut, r.CostUnits, r.IPHashes); err != nil {
				return err
			}
		}
		return b.Send()
	})
}

// redactDSN hides the password of a DSN for messages.
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparseable)"
	}
	if u.User == nil {
		return dsn
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
