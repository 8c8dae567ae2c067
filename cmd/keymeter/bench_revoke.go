package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/verifier"
)

func init() { registerBench(newBenchRevokeE2ECmd) }

func newBenchRevokeE2ECmd(g *globals) *cobra.Command {
	var (
		bf       busFlags
		df       detectorFlags
		trials   int
		flushInt time.Duration
	)
	c := &cobra.Command{
		Use:   "revoke-e2e",
		Short: "From the event that crosses a revoke threshold entering the verifier to the verifier refusing the key: p50, p99",
		Long: `Each trial creates a key and sends it through a verifier from four countries,
then from a fifth: that request crosses the revoke threshold of the bench's
own rule (five countries in 30 minutes, no corroboration: the starter pack
judges keys only once their profile is mature, which a new key is not). The
clock starts when it is sent and stops at the first request with the key
that the verifier refuses. Verifier, detector and bus run in this process;
the circuit breaker is off for the run.`,
		Example: `  keymeter bench revoke-e2e --bus nats --trials 200
  keymeter bench revoke-e2e --bus kafka --kafka-brokers 127.0.0.1:19092`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			log := g.Logger()
			dir, err := os.MkdirTemp("", "keymeter-bench-revoke-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			bf.Prefix = fmt.Sprintf("benchr%d", time.Now().UnixNano()%1_000_000_000)
			b, err := bf.open(ctx, dir, log)
			if err != nil {
				return err
			}
			defer b.Close(context.Background())
			table := keys.NewTable(keys.TableConfig{KeepState: true, Logger: log})
			eg, ectx := errgroup.WithContext(ctx)
			eg.Go(func() error { return table.Run(ectx, b) })
			<-table.Ready()
			svc, err := keys.NewService(keys.ServiceConfig{KeyLog: b, Table: table, Logger: log})
			if err != nil {
				return err
			}
			df.MaxRevokes, df.MaxGlobal = -1, -1
			rulesDir := filepath.Join(dir, "rules")
			if err := os.MkdirAll(rulesDir, 0o750); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(rulesDir, "bench.yaml"), []byte(benchRevokeRule), 0o600); err != nil {
				return err
			}
			df.Rules = []string{rulesDir}
			det, err := buildDetector(ectx, &df, b, nil, svc, nil, log)
			if err != nil {
				return err
			}
			det.run(ectx, eg)
			upstream := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) })
			upLn, err := listen("127.0.0.1:0", "upstream")
			if err != nil {
				return err
			}
			eg.Go(func() error { return serve(ectx, upLn, upstream, log) })
			addrc := make(chan string, 1)
			vcfg := verifier.RunConfig{Listen: "127.0.0.1:0", Upstream: "http://" + upLn.Addr().String(), DataDir: filepath.Join(dir, "verifier"),
				VerifierID: "bench-verifier", Bus: b.Bus, Logger: log,
				HTTP:     verifier.HTTPConfig{CountryHeader: "CF-IPCountry", TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
				OnListen: func(m, _, _ net.Addr) { addrc <- m.String() }}
			vcfg.Emitter.FlushInterval = flushInt
			if err := os.MkdirAll(vcfg.DataDir, 0o750); err != nil {
				return err
			}
			eg.Go(func() error { return verifier.Run(ectx, vcfg) })
			var target string
			select {
			case target = <-addrc:
			case <-time.After(30 * time.Second):
				return fmt.Errorf("verifier did not start")
			}
			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			send := func(secret, country string) (int, error) {
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+target+"/v1/items", nil)
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
			fmt.Fprintf(os.Stderr, "bench revoke-e2e: bus=%s trials=%d verifier flush interval=%s\n", bf.Backend, trials, flushInt)
			var lats []time.Duration
			p := progress{name: "bench revoke-e2e", every: 2 * time.Second}
			for i := range trials {
				k, err := svc.Create(ctx, keys.CreateParams{Project: "proj_bench"})
				if err != nil {
					return err
				}
				secret := k.Secret.Reveal()
				// The verifier's own key table learns of the new key over the
				// bus: wait for it before the trial starts.
				for w := 0; ; w++ {
					st, err := send(secret, "US")
					if err == nil && st == 200 {
						break
					}
					if w > 5000 {
						return fmt.Errorf("trial %d: new key never accepted (%d, %v)", i, st, err)
					}
					time.Sleep(200 * time.Microsecond)
				}
				for _, c := range []string{"DE", "BR", "JP"} {
					if st, err := send(secret, c); err != nil || st != 200 {
						return fmt.Errorf("trial %d: warm-up request refused (%d, %v)", i, st, err)
					}
				}
				t0 := time.Now()
				if _, err := send(secret, "NG"); err != nil {
					return err
				}
				refused := false
				for time.Since(t0) < 30*time.Second {
					st, err := send(secret, "NG")
					if err == nil && st != 200 {
						refused = true
						break
					}
					time.Sleep(200 * time.Microsecond)
				}
				if !refused {
					return fmt.Errorf("trial %d: key %s still accepted 30s after crossing the threshold", i, k.State.GetId())
				}
				lats = append(lats, time.Since(t0))
				p.tick(ctx, "%d/%d trials, last %s", i+1, trials, lats[len(lats)-1].Round(time.Millisecond))
			}
			cancel()
			_ = eg.Wait()
			var s summary
			s.add("bench", "revoke-e2e")
			s.add("bus", bf.Backend)
			s.add("trials", trials)
			s.add("p50_ms", percentileMS(lats, 0.5))
			s.add("p99_ms", percentileMS(lats, 0.99))
			s.add("max_ms", percentileMS(lats, 1))
			s.print()
			return nil
		},
	}
	bf.add(c.Flags())
	df.add(c)
	c.Flags().IntVar(&trials, "trials", 100, "revocations to time")
	c.Flags().DurationVar(&flushInt, "flush-interval", 50*time.Millisecond, "verifier event batch flush interval")
	return c
}

// benchRevokeRule revokes a key seen from five countries within 30 minutes.
const benchRevokeRule = `id: bench-revoke
version: 1
name: five countries
severity: high
mode: enforce
match: key_id != "" && outcome == "valid" && country != ""
aggregate: {group_by: [key_id], window: 30m, distinct: [country]}
suppress: 2h
actions:
  - {type: revoke, when: distinct.country >= 5, corroboration: none}
`
