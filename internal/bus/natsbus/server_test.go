package natsbus

import (
	"context"
	"testing"
)

// testServer starts an embedded server with its store in a temporary
// directory, shut down when the test ends.
func testServer(t testing.TB) *Embedded {
	t.Helper()
	srv, err := StartEmbedded(EmbeddedConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// busMaker returns a function that connects a new Bus (its own
// connection) to srv with cfg, closed when the test ends.
func busMaker(ctx context.Context, t testing.TB, srv *Embedded, cfg Config) func() *Bus {
	return func() *Bus {
		t.Helper()
		b, err := New(ctx, cfg, WithEmbedded(srv))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close(context.Background()) })
		return b
	}
}
