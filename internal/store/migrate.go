package store

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migration is one schema version: statements run in order. Statements must
// be idempotent (IF NOT EXISTS) so that a migration that failed half way can
// simply run again once fixed.
type Migration struct {
	Version    int
	Name       string
	Statements []string // may contain {db}, replaced by the quoted database name
}

var migrationName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.sql$`)

// Migrations are the store's schema versions, from migrations/NNNN_name.sql.
func Migrations() []Migration {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		panic(err) // embedded at build time: impossible
	}
	var out []Migration
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			panic("store: badly named migration " + e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		b, _ := migrationFiles.ReadFile("migrations/" + e.Name())
		out = append(out, Migration{Version: v, Name: m[2], Statements: SplitStatements(string(b))})
	}
	slices.SortFunc(out, func(a, b Migration) int { return a.Version - b.Version })
	return out
}

// SplitStatements splits a SQL file on semicolons that end a line and drops
// comment-only lines.
func SplitStatements(sql string) []string {
	var out []string
	var cur strings.Builder
	for line := range strings.SplitSeq(sql, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(t, ";") {
			s := strings.TrimSuffix(strings.TrimSpace(cur.String()), ";")
			out = append(out, s)
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

const schemaMigrationsDDL = `CREATE TABLE IF NOT EXISTS {db}.schema_migrations
(
    version UInt32,
    name    String,
    applied DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version`

// MigrationError says which migration and statement failed. The failed
// migration's version is not recorded.
type MigrationError struct {
	Version   int
	Name      string
	Statement int // 1-based
	SQL       string
	Err       error
}

func (e *MigrationError) Error() string {
	first := e.SQL
	if i := strings.IndexByte(first, '\n'); i >= 0 {
		first = first[:i]
	}
	return fmt.Sprintf("migration %04d_%s: statement %d (%s): %v", e.Version, e.Name, e.Statement, strings.TrimSpace(first), e.Err)
}

func (e *MigrationError) Unwrap() error { return e.Err }

func (d *DB) ensureDatabase(ctx context.Context) error {
	if err := d.conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+d.q, nil); err != nil {
		return fmt.Errorf("store: create database %s: %w", d.database, err)
	}
	if err := d.conn.Exec(ctx, d.sql(schemaMigrationsDDL), nil); err != nil {
		return fmt.Errorf("store: create schema_migrations: %w", err)
	}
	return nil
}

func (d *DB) appliedVersions(ctx context.Context) (map[int]time.Time, error) {
	rows, err := d.conn.Query(ctx, d.sql(`SELECT toUInt64(version), toInt64(toUnixTimestamp64Milli(applied)) FROM {db}.schema_migrations FINAL`), nil)
	if err != nil {
		return nil, fmt.Errorf("store: read schema_migrations: %w", err)
	}
	defer rows.Close()
	out := map[int]time.Time{}
	for rows.Next() {
		var v uint64
		var at int64
		if err := rows.Scan(&v, &at); err != nil {
			return nil, err
		}
		out[int(v)] = msTime(at)
	}
	return out, rows.Err()
}

// Migrate applies the store's migrations.
func (d *DB) Migrate(ctx context.Context) ([]int, error) { return d.MigrateWith(ctx, Migrations()) }

// MigrateWith applies the given migrations in version order, each recorded
// only after all its statements succeeded.
func (d *DB) MigrateWith(ctx context.Context, migs []Migration) ([]int, error) {
	if err := d.ensureDatabase(ctx); err != nil {
		return nil, err
	}
	done, err := d.appliedVersions(ctx)
	if err != nil {
		return nil, err
	}
	var applied []int
	for _, m := range migs {
		if _, ok := done[m.Version]; ok {
			continue
		}
		for i, st := range m.Statements {
			if err := d.conn.Exec(ctx, d.sql(st), nil); err != nil {
				return applied, &MigrationError{Version: m.Version, Name: m.Name, Statement: i + 1, SQL: st, Err: err}
			}
		}
		p := Params{}.U64("v", uint64(m.Version)).Str("n", m.Name).Ms("at", time.Now())
		if err := d.conn.Exec(ctx, d.sql(`INSERT INTO {db}.schema_migrations (version, name, applied) SELECT {v:UInt32}, {n:String}, fromUnixTimestamp64Milli({at:Int64}, 'UTC')`), p); err != nil {
			return applied, fmt.Errorf("store: record migration %04d: %w", m.Version, err)
		}
		applied = append(applied, m.Version)
	}
	return applied, nil
}

// MigrationStatus lists the store's migrations and which are applied.
func (d *DB) MigrationStatus(ctx context.Context) ([]MigrationState, error) {
	return d.MigrationStatusWith(ctx, Migrations())
}

// MigrationStatusWith is MigrationStatus for a given migration set.
func (d *DB) MigrationStatusWith(ctx context.Context, migs []Migration) ([]MigrationState, error) {
	if err := d.ensureDatabase(ctx); err != nil {
		return nil, err
	}
	done, err := d.appliedVersions(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]MigrationState, 0, len(migs))
	for _, m := range migs {
		at, ok := done[m.Version]
		out = append(out, MigrationState{Version: m.Version, Name: m.Name, Applied: ok, AppliedAt: at})
	}
	return out, nil
}
