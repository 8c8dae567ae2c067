package chdb

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// Config configures the embedded store.
type Config struct {
	// DataDir holds the ClickHouse data. Empty: in memory (tests, benchmarks).
	DataDir string
	// Database is the ClickHouse database (default "keymeter").
	Database string
}

// Validate checks the config.
func (c Config) Validate() error {
	if c.Database != "" {
		if err := store.ValidateDatabase(c.Database); err != nil {
			return err
		}
	}
	if strings.ContainsAny(c.DataDir, "'\\\x00") {
		return fmt.Errorf("chdb: data dir %q: quotes and backslashes are not supported", c.DataDir)
	}
	return nil
}

// ErrLocked: another process uses the data directory.
var ErrLocked = errors.New("chdb: data directory is in use by another process")

// One chDB session per process, shared by every store opened on it.
var shared struct {
	mu   sync.Mutex
	s    *session
	dir  string
	refs int
	lock *os.File
	tmp  string
}

// Open opens (or joins) the process's chDB session on cfg.DataDir and
// returns a store on cfg.Database. It does not migrate.
func Open(cfg Config) (*store.DB, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c, err := acquire(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	db, err := store.NewDB(c, cfg.Database)
	if err != nil {
		c.Close()
		return nil, err
	}
	return db, nil
}

func acquire(dir string) (*conn, error) {
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		dir = abs
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.s != nil {
		if shared.dir != dir {
			return nil, fmt.Errorf("chdb: data directory %q is open in this process; chDB allows one per process (asked for %q)", shared.dir, dir)
		}
		shared.refs++
		return &conn{s: shared.s, tmp: shared.tmp}, nil
	}
	if err := Load(); err != nil {
		return nil, err
	}
	var args []string
	tmp := os.TempDir()
	var lock *os.File
	if dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("chdb: data dir: %w", err)
		}
		f, err := os.OpenFile(filepath.Join(dir, "keymeter.lock"), os.O_CREATE|os.O_RDWR, 0o640)
		if err != nil {
			return nil, fmt.Errorf("chdb: data dir: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %s (stop the other keymeter, or use another --data-dir)", ErrLocked, dir)
		}
		lock = f
		tmp = filepath.Join(dir, "tmp-insert")
		if err := os.MkdirAll(tmp, 0o750); err != nil {
			return nil, fmt.Errorf("chdb: data dir: %w", err)
		}
		args = append(args, "--path="+dir)
	}
	s, err := connect(args)
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		return nil, err
	}
	shared.s, shared.dir, shared.refs, shared.lock, shared.tmp = s, dir, 1, lock, tmp
	return &conn{s: s, tmp: tmp}, nil
}

func release() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	shared.refs--
	if shared.refs > 0 {
		return
	}
	shared.s.close()
	if shared.lock != nil {
		shared.lock.Close()
	}
	shared.s, shared.dir, shared.lock = nil, "", nil
}

// conn is one store's handle on the shared session.
type conn struct {
	s      *session
	tmp    string
	closed sync.Once
}

var _ store.Conn = (*conn)(nil)

func (c *conn) Backend() string { return "chdb" }

func (c *conn) Close() error {
	c.closed.Do(release)
	return nil
}

func paramArgs(p store.Params) (names, values []string) {
	for _, x := range p {
		names = append(names, x.Name)
		values = append(values, x.Text())
	}
	return names, values
}

// Exec runs a statement. chDB calls cannot be interrupted: the context is
// checked before the call.
func (c *conn) Exec(ctx context.Context, q string, p store.Params) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n, v := paramArgs(p)
	_, err := c.s.query(q, "TabSeparated", n, v)
	return err
}

// Query runs a SELECT and returns its rows.
func (c *conn) Query(ctx context.Context, q string, p store.Params) (store.Rows, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n, v := paramArgs(p)
	out, err := c.s.query(q, "TabSeparated", n, v)
	if err != nil {
		return nil, err
	}
	return &tsvRows{data: out}, nil
}

const eventColumns = "time, project, key_id, event_id, outcome, client_ip, country, asn, method, host, route, status, latency_us, bytes_in, bytes_out, user_agent, verifier_id, cost_units"

// InsertEvents writes the events in Native format to a temporary file and
// inserts it in one statement with the deduplication token.
func (c *conn) InsertEvents(ctx context.Context, database, token string, events []event.Event) error {
	p, err := c.PrepareEvents(database, token, events)
	if err != nil {
		return err
	}
	defer p.Close()
	return p.Exec(ctx)
}

// PrepareEvents implements store.Preparer: it writes the Native file now
// (while another statement may be running) and inserts it on Exec.
func (c *conn) PrepareEvents(database, token string, events []event.Event) (store.Prepared, error) {
	return c.prepareFile(database, "requests", eventColumns, token, "Native", func(w *bufio.Writer) error {
		return writeEventsNative(w, events)
	})
}

const rollupColumns = "minute, project, key_id, outcome, route, country, requests, bytes_in, bytes_out, cost_units, ip_hashes"

// InsertRollup inserts pre-aggregated buckets the same way.
func (c *conn) InsertRollup(ctx context.Context, database, token string, rows []store.RollupRow) error {
	p, err := c.PrepareRollup(database, token, rows)
	if err != nil {
		return err
	}
	defer p.Close()
	return p.Exec(ctx)
}

// PrepareRollup implements store.Preparer for pre-aggregated buckets.
func (c *conn) PrepareRollup(database, token string, rows []store.RollupRow) (store.Prepared, error) {
	if len(rows) == 0 {
		return noop{}, nil
	}
	return c.prepareFile(database, "rollup_input", rollupColumns, token, "RowBinary", func(w *bufio.Writer) error {
		var row []byte
		for i := range rows {
			row = appendRollup(row[:0], &rows[i])
			if _, err := w.Write(row); err != nil {
				return err
			}
		}
		return nil
	})
}

type noop struct{}

func (noop) Exec(context.Context) error { return nil }
func (noop) Close() error               { return nil }

// fileInsert is an INSERT ... FROM INFILE of a file already written.
type fileInsert struct {
	c    *conn
	name string
	q    string
}

// Exec runs the insert; it may be run again (a retry) until Close.
func (f *fileInsert) Exec(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := f.c.s.query(f.q, "TabSeparated", nil, nil)
	return err
}

// Close removes the file.
func (f *fileInsert) Close() error { return os.Remove(f.name) }

// prepareFile streams rows into a temporary file for one insert.
func (c *conn) prepareFile(database, table, columns, token, format string, write func(*bufio.Writer) error) (store.Prepared, error) {
	if err := store.ValidateDatabase(database); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(c.tmp, "insert-*.bin")
	if err != nil {
		return nil, fmt.Errorf("chdb: insert file: %w", err)
	}
	name := f.Name()
	w := bufio.NewWriterSize(f, 1<<20)
	err = write(w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && strings.ContainsAny(name, "'\\") {
		err = fmt.Errorf("temporary directory %q has a quote or backslash in its path", c.tmp)
	}
	if err != nil {
		os.Remove(name)
		return nil, fmt.Errorf("chdb: insert file: %w", err)
	}
	// The file name is ours; the token was checked by the store to be
	// printable ASCII without spaces, and is quoted here with its quotes and
	// backslashes escaped. SETTINGS takes no query parameters.
	q := "INSERT INTO `" + database + "`." + table + " (" + columns + ") FROM INFILE '" + name +
		"' SETTINGS async_insert = 0, insert_deduplication_token = " + quote(token) +
		", deduplicate_blocks_in_dependent_materialized_views = 1 FORMAT " + format
	return &fileInsert{c: c, name: name, q: q}, nil
}

func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(s) + "'"
}
