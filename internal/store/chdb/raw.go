package chdb

import (
	"context"

	"github.com/keymeter/keymeter/internal/store"
)

// QueryFormat runs a SELECT and hands fn its whole output in format, in
// chDB's buffer (valid only during fn: no copy into Go memory). The store's
// history scan asks for Native and decodes it into events itself, much
// cheaper than TabSeparated parsed row by row.
func (c *conn) QueryFormat(ctx context.Context, q, format string, p store.Params, fn func([]byte) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n, v := paramArgs(p)
	return c.s.queryFunc(q, format, n, v, fn)
}
