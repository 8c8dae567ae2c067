package natscluster

import (
	"context"
	"testing"
	"time"
)

// New starts a 3-node cluster under t's temporary directory, killed at
// cleanup. A node that does not start fails the test (never a skip).
func New(t testing.TB) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}
