// Package storeopen opens the store that a command's flags select: the
// embedded engine (chdb) under a data dir, or a ClickHouse server. The
// commands of cmd/keymeter define the flags; this is what they do with them.
package storeopen

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
	"github.com/keymeter/keymeter/internal/store/clickhouse"
)

// Config selects and configures the store.
type Config struct {
	Backend  string // chdb or clickhouse
	DataDir  string // chdb: the engine's data lives in DataDir/clickhouse
	DSN      string // clickhouse: clickhouse://user:password@host:9000/database
	Database string // default: keymeter, or the DSN's database
}

// Validate reports a backend that is not chdb or clickhouse.
func (c Config) Validate() error {
	switch c.Backend {
	case "chdb", "clickhouse":
		return nil
	}
	return fmt.Errorf("--store %q: accepted: chdb, clickhouse", c.Backend)
}

// Open opens the store (not migrated).
func Open(ctx context.Context, c Config) (*store.DB, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Backend == "clickhouse" {
		return clickhouse.Open(ctx, clickhouse.Config{DSN: c.DSN, Database: c.Database})
	}
	dir := c.DataDir
	if dir != "" {
		dir = filepath.Join(dir, "clickhouse")
	}
	return chdb.Open(chdb.Config{DataDir: dir, Database: c.Database})
}
