package devstack

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/busopen"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/storeopen"
)

// Bind defines keymeter dev's own flags (listeners, demo traffic) on fs,
// writing into c; the bus, store, detector and leak flags are their
// packages'.
func (c *Config) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&c.ProxyListen, "proxy-listen", "127.0.0.1:8080", "the verifier (reverse proxy in front of the demo API)")
	fs.StringVar(&c.APIListen, "api-listen", "127.0.0.1:8081", "the REST API")
	fs.StringVar(&c.AdminListen, "admin-listen", "127.0.0.1:9464", "metrics of the verifier")
	fs.StringVar(&c.MetricsListen, "metrics-listen", "127.0.0.1:9465", "metrics of the aggregator, detector and API (empty to disable)")
	fs.IntVar(&c.DemoKeys, "demo-keys", 20, "demo keys the load generator uses")
	fs.Float64Var(&c.Rate, "rate", 200, "normal demo requests per second")
	fs.StringSliceVar(&c.Attacks, "attacks", []string{"geo-shift", "credential-stuffing", "anon-burst", "leaked-key", "quota-spike"}, "attack scenarios, taking turns")
	fs.DurationVar(&c.AttackEvery, "attack-every", 15*time.Second, "start an attack this often")
	fs.DurationVar(&c.AttackAfter, "attack-after", 8*time.Second, "first attack after this long")
	fs.Uint64Var(&c.Seed, "seed", uint64(time.Now().Unix()), "traffic seed")
	fs.DurationVar(&c.SummaryEvery, "summary-every", 5*time.Second, "how often the summary line is printed")
	fs.BoolVar(&c.NoTraffic, "no-traffic", false, "start the pipeline without demo traffic")
}

// Open opens what dev runs on: the store first (if the embedded engine is
// missing, that is said before anything starts), migrated, then the bus
// (OpenBus, with its note). On an error nothing stays open.
func Open(ctx context.Context, sc storeopen.Config, bc busopen.Config, port int, portGiven bool, log *slog.Logger) (*store.DB, bus.Bus, string, error) {
	if err := os.MkdirAll(sc.DataDir, 0o750); err != nil {
		return nil, nil, "", fmt.Errorf("--data-dir: %w", err)
	}
	st, err := storeopen.Open(ctx, sc)
	if err != nil {
		return nil, nil, "", err
	}
	if _, err := st.Migrate(ctx); err != nil {
		st.Close(context.Background())
		return nil, nil, "", fmt.Errorf("migrate: %w", err)
	}
	b, note, err := OpenBus(ctx, bc, sc.DataDir, port, portGiven, log)
	if err != nil {
		st.Close(context.Background())
		return nil, nil, "", err
	}
	return st, b, note, nil
}
