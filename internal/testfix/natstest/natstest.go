// Package natstest holds the test fixtures that many packages share: an
// embedded NATS server with a bus on it, and a running key table with its
// key service. Everything started is stopped by t.Cleanup.
package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/keys"
)

// Server starts an embedded NATS server (in-process only) in a temporary
// directory.
func Server(t testing.TB) *natsbus.Embedded {
	t.Helper()
	srv, err := natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// Bus returns a bus with cfg on srv (a new embedded server when srv is nil).
func Bus(t testing.TB, srv *natsbus.Embedded, cfg natsbus.Config) *natsbus.Bus {
	t.Helper()
	if srv == nil {
		srv = Server(t)
	}
	b, err := natsbus.New(context.Background(), cfg, natsbus.WithEmbedded(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

// Keys returns a key table (keeping state) that follows kl, loaded, and a
// key service writing to kl.
func Keys(t testing.TB, kl bus.KeyLog) (*keys.Table, *keys.Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	table, err := keys.NewTable(keys.TableConfig{KeepState: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() { defer close(done); _ = table.Run(ctx, kl) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-table.Ready():
	case <-time.After(time.Minute):
		t.Fatal("key table not loaded after a minute")
	}
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: kl, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	return table, svc
}
