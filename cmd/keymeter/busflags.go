package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/busopen"
	"github.com/keymeter/keymeter/internal/keys"
)

// busFlags select and configure the bus for any role.
type busFlags struct{ busopen.Config }

func (f *busFlags) add(fs *pflag.FlagSet) { f.Bind(fs) }

// natsCredsFile is where the embedded NATS server started on dataDir keeps
// the nkey seed its clients authenticate with.
func natsCredsFile(dataDir string) string { return busopen.CredsFile(dataDir) }

// open connects to the bus (busopen.Open).
func (f *busFlags) open(ctx context.Context, dataDir string, log *slog.Logger) (bus.Bus, error) {
	return busopen.Open(ctx, f.Config, dataDir, log)
}

// closeSoon closes the bus with a bounded grace, for defer.
func closeSoon(b bus.Bus) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = b.Close(ctx)
}

// keyService is a key table (full states kept) and the lifecycle service
// writing through it; the caller runs table.Run.
func keyService(b bus.KeyLog, log *slog.Logger) (*keys.Table, *keys.Service, error) {
	return keys.NewStateService(b, keys.WithLogger(log))
}
