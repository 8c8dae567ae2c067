package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/bench/proc"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/ctxtime"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/verifier"
)

// RevocationConfig is `keymeter bench revocation`: the time from a
// revocation to the last verifier's key table refusing the key.
type RevocationConfig struct {
	Bus         bus.Bus // the admin connection: keys are written and revoked through it
	Backend     string  // for the summary
	Verifiers   int
	Keys        int
	Revocations int
	// Connect opens one more connection to the same bus: each verifier has
	// its own, as separate processes would. The harness closes them.
	Connect func(ctx context.Context) (bus.Bus, error)
	Logger  *slog.Logger
	Output
}

func (c *RevocationConfig) validate() error {
	if c.Verifiers < 1 || c.Keys < 1 || c.Revocations < 1 || c.Revocations > c.Keys {
		return errors.New("need --verifiers ≥ 1, --keys ≥ 1 and 1 ≤ --revocations ≤ --keys")
	}
	if c.Bus == nil || c.Connect == nil {
		return errors.New("bench revocation: a bus and a way to connect to it again are required")
	}
	return nil
}

// RunRevocation writes the keys, starts the verifiers' key tables, revokes
// random keys one after the other and prints p50/p99 of the time until
// every verifier refuses each, from the start and from the return of the
// revoke call.
func RunRevocation(ctx context.Context, cfg RevocationConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.logf("bench revocation: backend=%s writing %d keys", cfg.Backend, cfg.Keys)
	start := time.Now()
	secrets, states, err := PutKeys(ctx, cfg.Bus, cfg.Keys, "proj_bench", 0)
	if err != nil {
		return err
	}
	cfg.logf("bench revocation: %d keys written in %s; starting %d verifiers", cfg.Keys, time.Since(start).Round(time.Millisecond), cfg.Verifiers)
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var buses []bus.Bus
	defer func() {
		stop()
		wg.Wait()
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, b := range buses {
			_ = b.Close(cctx)
		}
	}()
	tables := make([]*keys.Table, 0, cfg.Verifiers+1)
	for i := 0; i <= cfg.Verifiers; i++ { // the last table is the service's
		b, err := cfg.Connect(ctx)
		if err != nil {
			return err
		}
		buses = append(buses, b)
		tbl, err := keys.NewTable(keys.TableConfig{KeepState: i == cfg.Verifiers}, keys.WithLogger(cfg.Logger))
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = tbl.Run(rctx, b) }()
		tables = append(tables, tbl)
	}
	if err := waitLoaded(ctx, cfg, tables); err != nil {
		return err
	}
	fromStart, fromReturn, err := timeRevocations(ctx, cfg, tables, secrets, states)
	if err != nil {
		return err
	}
	var s Summary
	s.Add("bench", "revocation")
	s.Add("backend", cfg.Backend)
	s.Add("verifiers", cfg.Verifiers)
	s.Add("keys", cfg.Keys)
	s.Add("revocations", cfg.Revocations)
	s.Add("p50_ms", fmt.Sprintf("%.3f", PercentileMS(fromStart, 0.50)))
	s.Add("p99_ms", fmt.Sprintf("%.3f", PercentileMS(fromStart, 0.99)))
	s.Add("p50_from_return_ms", fmt.Sprintf("%.3f", PercentileMS(fromReturn, 0.50)))
	s.Add("p99_from_return_ms", fmt.Sprintf("%.3f", PercentileMS(fromReturn, 0.99)))
	s.Add("rss_mb", proc.RSSMB())
	s.Print(cfg.out())
	return nil
}

// waitLoaded waits until every table holds every key (a snapshot may
// predate the last puts).
func waitLoaded(ctx context.Context, cfg RevocationConfig, tables []*keys.Table) error {
	load := time.Now()
	for _, tbl := range tables {
		select {
		case <-tbl.Ready():
		case <-ctx.Done():
			return ctx.Err()
		}
		for tbl.Len() < cfg.Keys {
			if err := ctxtime.Sleep(ctx, time.Millisecond); err != nil {
				return err
			}
		}
	}
	cfg.logf("bench revocation: %d tables loaded in %s", len(tables), time.Since(load).Round(time.Millisecond))
	return nil
}

func timeRevocations(ctx context.Context, cfg RevocationConfig, tables []*keys.Table, secrets []string, states []*keymeterv1.KeyState) (fromStart, fromReturn []time.Duration, err error) {
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: cfg.Bus, Table: tables[cfg.Verifiers]})
	if err != nil {
		return nil, nil, err
	}
	vs := make([]*verifier.Verifier, cfg.Verifiers)
	for k := range vs {
		if vs[k], err = verifier.New(verifier.Config{Table: tables[k]}); err != nil {
			return nil, nil, err
		}
	}
	ip := netip.MustParseAddr("203.0.113.9")
	p := Progress{Name: "bench revocation", Every: time.Second, W: cfg.progress()}
	for i, j := range rand.Perm(cfg.Keys)[:cfg.Revocations] {
		st := states[j]
		t0 := time.Now()
		if err := svc.Revoke(ctx, st.GetId(), "bench"); err != nil {
			return nil, nil, err
		}
		t1 := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		for k, v := range vs {
			if err := tables[k].WaitVersion(wctx, st.GetId(), st.GetVersion()+1); err != nil {
				cancel()
				return nil, nil, fmt.Errorf("verifier %d never saw revocation %d: %w", k, i, err)
			}
			if d := v.Verify(&verifier.Request{Key: secrets[j], ClientIP: ip, Path: "/"}); d.Outcome != event.OutcomeRevoked {
				cancel()
				return nil, nil, fmt.Errorf("verifier %d: revoked key got %s", k, d.Outcome)
			}
		}
		cancel()
		t2 := time.Now()
		fromStart = append(fromStart, t2.Sub(t0))
		fromReturn = append(fromReturn, t2.Sub(t1))
		p.Tick("%d/%d revocations", i+1, cfg.Revocations)
	}
	return fromStart, fromReturn, nil
}
