package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/verifier"
)

// RevokeConfig is `keymeter bench revoke-e2e`: from the event that crosses
// the geography-shift rule's revoke threshold entering a verifier to the
// verifier refusing the key.
type RevokeConfig struct {
	Bus           bus.Bus // the adapter itself, so that key writes use its compare-and-set
	Backend       string  // for the summary
	Trials        int
	FlushInterval time.Duration // the verifier's event batch flush interval
	DataDir       string        // the verifier's spool lives under it
	Logger        *slog.Logger
	// Detector starts the detection role in eg, acting through svc, with
	// rules that include geography-shift and no circuit breaker.
	Detector func(ctx context.Context, eg *errgroup.Group, svc *keys.Service) error
	Output
}

// RunRevokeE2E runs the trials and prints the latency percentiles. Each
// trial creates a key and sends it through the verifier from four
// countries, then from a fifth; the clock starts when that request is sent
// and stops at the first request with the key that the verifier refuses.
func RunRevokeE2E(ctx context.Context, cfg RevokeConfig) error {
	if cfg.Trials <= 0 || cfg.Detector == nil || cfg.DataDir == "" {
		return errors.New("bench revoke-e2e: trials, a detector and a data directory are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	table, svc, err := keys.NewStateService(cfg.Bus, keys.WithLogger(log))
	if err != nil {
		return err
	}
	eg, ectx := errgroup.WithContext(ctx)
	defer func() { cancel(); _ = eg.Wait() }()
	eg.Go(func() error { return table.Run(ectx, cfg.Bus) })
	select {
	case <-table.Ready():
	case <-ectx.Done():
		return fmt.Errorf("bench revoke-e2e: key table did not load: %w", context.Cause(ectx))
	}
	if err := cfg.Detector(ectx, eg, svc); err != nil {
		return err
	}
	target, err := startRevokeVerifier(ectx, eg, cfg)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	send := func(secret, country string) (int, error) {
		req, _ := http.NewRequestWithContext(ectx, "GET", "http://"+target+"/v1/items", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		req.Header.Set("CF-IPCountry", country)
		req.Header.Set("X-Forwarded-For", "100.64.0.1")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	cfg.logf("bench revoke-e2e: bus=%s trials=%d verifier flush interval=%s", cfg.Backend, cfg.Trials, cfg.FlushInterval)
	var lats []time.Duration
	p := Progress{Name: "bench revoke-e2e", Every: 2 * time.Second, W: cfg.progress()}
	for i := range cfg.Trials {
		lat, err := revokeTrial(ectx, svc, send)
		if err != nil {
			return fmt.Errorf("bench revoke-e2e: trial %d: %w", i, err)
		}
		lats = append(lats, lat)
		p.Tick("%d/%d trials, last %s", i+1, cfg.Trials, lat.Round(time.Millisecond))
	}
	var s Summary
	s.Add("bench", "revoke-e2e")
	s.Add("bus", cfg.Backend)
	s.Add("trials", cfg.Trials)
	s.Add("p50_ms", PercentileMS(lats, 0.5))
	s.Add("p99_ms", PercentileMS(lats, 0.99))
	s.Add("max_ms", PercentileMS(lats, 1))
	s.Print(cfg.out())
	return nil
}

// revokeTrial is one trial: the time from the threshold-crossing request
// to the first refusal.
func revokeTrial(ctx context.Context, svc *keys.Service, send func(secret, country string) (int, error)) (time.Duration, error) {
	k, err := svc.Create(ctx, keys.CreateParams{Project: "proj_bench"})
	if err != nil {
		return 0, err
	}
	secret := k.Secret.Reveal()
	// The verifier's own key table learns of the new key over the bus:
	// wait for it before the trial starts.
	for w := 0; ; w++ {
		st, err := send(secret, "US")
		if err == nil && st == 200 {
			break
		}
		if w > 5000 || ctx.Err() != nil {
			return 0, fmt.Errorf("new key never accepted (%d, %v)", st, err)
		}
		time.Sleep(200 * time.Microsecond)
	}
	for _, c := range []string{"DE", "BR", "JP"} {
		if st, err := send(secret, c); err != nil || st != 200 {
			return 0, fmt.Errorf("warm-up request refused (%d, %v)", st, err)
		}
	}
	t0 := time.Now()
	if _, err := send(secret, "NG"); err != nil {
		return 0, err
	}
	for time.Since(t0) < 30*time.Second && ctx.Err() == nil {
		st, err := send(secret, "NG")
		if err == nil && st != 200 {
			return time.Since(t0), nil
		}
		time.Sleep(200 * time.Microsecond)
	}
	return 0, fmt.Errorf("key %s still accepted 30s after crossing the threshold", k.State.GetId())
}

// startRevokeVerifier starts, in eg, an upstream answering 200 and a
// verifier in front of it on the bus, and returns the verifier's address.
func startRevokeVerifier(ectx context.Context, eg *errgroup.Group, cfg RevokeConfig) (string, error) {
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) }), ReadHeaderTimeout: 5 * time.Second}
	eg.Go(func() error {
		go func() { <-ectx.Done(); _ = up.Close() }()
		if err := up.Serve(upLn); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	addrc := make(chan string, 1)
	vcfg := verifier.RunConfig{Listen: "127.0.0.1:0", Upstream: "http://" + upLn.Addr().String(), DataDir: filepath.Join(cfg.DataDir, "verifier"),
		VerifierID: "bench-verifier", Bus: cfg.Bus, Logger: cfg.Logger,
		HTTP:     verifier.HTTPConfig{CountryHeader: "CF-IPCountry", TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
		OnListen: func(m, _, _ net.Addr) { addrc <- m.String() }}
	vcfg.Emitter.FlushInterval = cfg.FlushInterval
	if err := os.MkdirAll(vcfg.DataDir, 0o750); err != nil {
		return "", err
	}
	eg.Go(func() error { return verifier.Run(ectx, vcfg) })
	select {
	case target := <-addrc:
		return target, nil
	case <-ectx.Done():
		return "", fmt.Errorf("bench revoke-e2e: verifier did not start: %w", eg.Wait())
	case <-time.After(30 * time.Second):
		return "", errors.New("bench revoke-e2e: verifier did not start within 30s")
	}
}
