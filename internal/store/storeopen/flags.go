package storeopen

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/store"
)

// Flags are the store flags of a command (--store, --clickhouse-dsn,
// --store-database, and --data-dir unless the command defines it first).
type Flags struct {
	Config
	fs *pflag.FlagSet
}

// Bind defines the store flags on fs; --data-dir is shared with whatever
// else on the command defines it first (bus, spool).
func (f *Flags) Bind(fs *pflag.FlagSet) {
	f.fs = fs
	fs.StringVar(&f.Backend, "store", "chdb", "store backend: chdb (embedded ClickHouse; needs libchdb, see scripts/chdb-lib.sh) or clickhouse (server)")
	if fs.Lookup("data-dir") == nil {
		fs.StringVar(&f.DataDir, "data-dir", "./data", "where state lives; the embedded store uses <data-dir>/clickhouse")
	}
	fs.StringVar(&f.DSN, "clickhouse-dsn", "clickhouse://127.0.0.1:9000/keymeter", "ClickHouse server DSN for --store clickhouse (clickhouse://user:password@host:9000/database); with a password prefer KEYMETER_CLICKHOUSE_DSN: arguments show in ps")
	fs.StringVar(&f.Database, "store-database", "", "ClickHouse database (default: keymeter, or the DSN's database)")
}

// BindWithDataDir defines --data-dir (into f.DataDir, with usage) and then
// the store flags: the form of the roles, whose bus shares the data dir.
func (f *Flags) BindWithDataDir(fs *pflag.FlagSet, usage string) {
	fs.StringVar(&f.DataDir, "data-dir", "data", usage)
	f.Bind(fs)
}

// Open opens the store; an unset data dir is the --data-dir defined first
// on the command (bus, spool).
func (f *Flags) Open(ctx context.Context) (*store.DB, error) {
	c := f.Config
	if f.fs != nil && c.DataDir == "" {
		if fl := f.fs.Lookup("data-dir"); fl != nil {
			c.DataDir = fl.Value.String()
		}
	}
	return Open(ctx, c)
}
