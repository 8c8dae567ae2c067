package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/busopen"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
	"github.com/keymeter/keymeter/internal/testfix/kafkacluster"
	"github.com/keymeter/keymeter/internal/testfix/natscluster"
	"github.com/keymeter/keymeter/internal/verifier"
)

// ChaosConfig is `keymeter bench chaos`: a 3-node bus cluster (NATS
// JetStream or Kafka KRaft, on the shipped configurations), verifiers
// answering requests and aggregators storing their events, while
// aggregators are killed (no graceful flush), the node leading the events
// (the events stream's leader on NATS, partition 0's leader on Kafka) is
// killed with SIGKILL and restarted, and verifiers are stopped and
// restarted. A key is revoked while the bus node is down and every
// verifier must refuse it. At the end every answered request's event must
// be in the store once.
type ChaosConfig struct {
	Bus         string    // nats or kafka
	Store       *store.DB // migrated, in a fresh database; nil: chDB under Dir/clickhouse
	Dir         string    // cluster nodes and verifier data go under it
	Events      int       // requests sent (each answered request is one event)
	Aggregators int       // 3
	Verifiers   int       // 2
	Kills       int       // kills spread over the run, in turn: aggregator, bus node, verifier
	Partitions  int       // 6
	Keys        int       // 50
	Clients     int       // concurrent HTTP clients, 8
	// Rate paces the requests (per second, all clients together); 0 sends
	// as fast as the verifiers answer.
	Rate float64
	// Outage is how long a killed bus node stays down (default 3s).
	Outage time.Duration
	// DurableLog runs the verifiers with --durable-log.
	DurableLog bool
	// NATSLeases runs the NATS aggregators with --nats-leases of this TTL
	// (any number of members; a killed one's partitions move to the
	// others) instead of each on partitions of its own.
	NATSLeases time.Duration
	Logger     *slog.Logger
	Output
}

// ChaosResult is what RunChaos measured.
type ChaosResult struct {
	Answered   int64 // requests a verifier answered (each emits one event)
	Stored     uint64
	Distinct   uint64 // distinct event ids stored
	Lost       int64  // answered events missing from the store, summed per key
	Extra      int64  // stored events beyond the answered, per key (requests whose answer the client lost)
	Duplicated int64  // rows whose event id is stored twice
	ClientErrs int64  // requests with no answer (verifier stopped, connection cut)
	Kills      int
	BusKills   int
	P99MS      float64
	// RevokeMS is the time from the revocation (made while a bus node was
	// down) to every live verifier refusing the key; -1 if no bus node
	// was killed.
	RevokeMS float64
	Elapsed  time.Duration
	// SelfRestarts counts aggregators that ended by themselves (and were
	// restarted, as a supervisor would).
	SelfRestarts int
}

// OK reports whether nothing was lost or doubled.
func (r ChaosResult) OK() bool {
	return r.Lost == 0 && r.Duplicated == 0 && r.Extra <= r.ClientErrs
}

func (c *ChaosConfig) defaults() error {
	if c.Bus != "nats" && c.Bus != "kafka" {
		return fmt.Errorf("bench chaos: --bus %q: accepted values are nats, kafka", c.Bus)
	}
	if c.Dir == "" {
		return errors.New("bench chaos: a data directory is required")
	}
	if c.Events < 1 {
		return errors.New("bench chaos: --events must be positive")
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Aggregators, 3)
	def(&c.Verifiers, 2)
	def(&c.Partitions, 6)
	def(&c.Keys, 50)
	def(&c.Clients, 8)
	if c.Kills < 0 {
		return errors.New("bench chaos: --kills must not be negative")
	}
	if c.Bus == "nats" && c.NATSLeases == 0 && c.Aggregators > c.Partitions {
		return fmt.Errorf("bench chaos: %d aggregators for %d partitions: on NATS each owns its own partitions", c.Aggregators, c.Partitions)
	}
	if c.Outage <= 0 {
		c.Outage = 3 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// chaosRun is one run's moving parts.
type chaosRun struct {
	cfg    ChaosConfig
	busCfg busopen.Config
	nats   *natscluster.Cluster
	kafka  *kafkacluster.Cluster
	log    *slog.Logger
	mu     sync.Mutex
	buses  []bus.Bus
	aggs   []*chaosMember
	vers   []*chaosVerifier
	errs   []error
	// selfRestarts counts aggregators restarted after ending by themselves.
	selfRestarts int
}

type chaosMember struct {
	parts  []int
	cancel context.CancelFunc
	done   chan error
	bus    bus.Bus
}

type chaosVerifier struct {
	id     string
	addr   atomic.Pointer[string]
	cancel context.CancelFunc
	done   chan error
	bus    bus.Bus
}

// RunChaos runs the scenario and prints one line:
// bench=chaos bus= events= answered= stored= lost= duplicated= kills= p99_ms= ...
func RunChaos(ctx context.Context, cfg ChaosConfig) (ChaosResult, error) {
	var res ChaosResult
	if err := cfg.defaults(); err != nil {
		return res, err
	}
	t0 := time.Now()
	if cfg.Store == nil {
		st, err := openChaosStore(ctx, cfg.Dir)
		if err != nil {
			return res, err
		}
		defer st.Close(context.Background())
		cfg.Store = st
	}
	r := &chaosRun{cfg: cfg, log: cfg.Logger}
	defer r.shutdown()
	if err := r.startCluster(ctx); err != nil {
		return res, err
	}
	cfg.logf("bench chaos: %s cluster of 3 up in %s", cfg.Bus, time.Since(t0).Round(time.Millisecond))
	tr, stopKeys, err := r.startKeys(ctx)
	if err != nil {
		return res, err
	}
	defer stopKeys()
	if err := r.startMembers(ctx); err != nil {
		return res, err
	}
	defer tr.client.CloseIdleConnections()
	if err := tr.waitAccepted(ctx); err != nil {
		return res, err
	}
	tctx, tcancel := context.WithCancel(ctx)
	defer tcancel()
	tr.start(tctx)
	kerr := r.runKills(ctx, tr, &res)
	tr.gate.Store(int64(cfg.Events))
	if kerr != nil {
		tcancel()
	}
	tr.wg.Wait()
	if kerr != nil {
		return res, fmt.Errorf("bench chaos: %w", kerr)
	}
	if err := r.err(); err != nil {
		return res, fmt.Errorf("bench chaos: %w", err)
	}
	if err := r.stopVerifiersDraining(ctx); err != nil {
		return res, err
	}
	tr.measure(&res)
	if err := r.waitStored(ctx, res.Answered); err != nil {
		return res, err
	}
	if err := r.tally(ctx, tr.answered, &res); err != nil {
		return res, err
	}
	res.Elapsed = time.Since(t0)
	res.SelfRestarts = r.selfRestarts
	return res, r.report(ctx, res)
}

// openChaosStore opens and migrates the embedded store under dir.
func openChaosStore(ctx context.Context, dir string) (*store.DB, error) {
	st, err := chdb.Open(chdb.Config{DataDir: filepath.Join(dir, "clickhouse"), Database: "chaos"})
	if err != nil {
		return nil, fmt.Errorf("bench chaos: store: %w", err)
	}
	if _, err := st.Migrate(ctx); err != nil {
		_ = st.Close(context.Background())
		return nil, fmt.Errorf("bench chaos: store: %w", err)
	}
	return st, nil
}

// chaosKey is a key the traffic uses.
type chaosKey struct{ id, secret string }

// startKeys starts the admin side (a key table and service of its own on
// its own connection), creates the keys and returns the traffic that uses
// them, and a stop for the key table.
func (r *chaosRun) startKeys(ctx context.Context) (*chaosTraffic, func(), error) {
	cfg := r.cfg
	admin, err := r.open(ctx)
	if err != nil {
		return nil, nil, err
	}
	table, err := keys.NewTable(keys.TableConfig{KeepState: true}, keys.WithLogger(r.log))
	if err != nil {
		return nil, nil, err
	}
	actx, acancel := context.WithCancel(ctx)
	tdone := make(chan error, 1)
	go func() { tdone <- table.Run(actx, admin) }()
	stop := func() { acancel(); <-tdone }
	fail := func(err error) (*chaosTraffic, func(), error) { stop(); return nil, nil, err }
	select {
	case <-table.Ready():
	case err := <-tdone:
		tdone <- err
		return fail(fmt.Errorf("bench chaos: key table: %w", err))
	case <-time.After(time.Minute):
		return fail(errors.New("bench chaos: key table not loaded within a minute"))
	}
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: admin, Table: table}, keys.WithLogger(r.log))
	if err != nil {
		return fail(err)
	}
	var ks []chaosKey
	for range cfg.Keys + 1 {
		k, err := svc.Create(ctx, keys.CreateParams{Project: "proj_chaos"})
		if err != nil {
			return fail(fmt.Errorf("bench chaos: create key: %w", err))
		}
		ks = append(ks, chaosKey{k.State.GetId(), k.Secret.Reveal()})
	}
	tr := &chaosTraffic{r: r, svc: svc, keys: ks[:cfg.Keys], revoked: ks[cfg.Keys], answered: map[string]int64{},
		lats:   make([][]time.Duration, cfg.Clients),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Clients, MaxIdleConns: 4 * cfg.Clients}}}
	tr.gate.Store(int64(cfg.Events))
	return tr, stop, nil
}

// startMembers starts the aggregators (on NATS each on its own
// partitions) and the verifiers.
func (r *chaosRun) startMembers(ctx context.Context) error {
	cfg := r.cfg
	for i := range cfg.Aggregators {
		var parts []int
		if cfg.Bus == "nats" && cfg.NATSLeases == 0 {
			for p := i; p < cfg.Partitions; p += cfg.Aggregators {
				parts = append(parts, p)
			}
		}
		if err := r.startAggregator(ctx, i, parts); err != nil {
			return err
		}
	}
	for i := range cfg.Verifiers {
		if err := r.startVerifier(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// chaosTraffic is the clients' side: the keys, the requests answered per
// key, and the pacing of the requests around the kills.
type chaosTraffic struct {
	r       *chaosRun
	svc     *keys.Service
	client  *http.Client
	keys    []chaosKey
	revoked chaosKey // revoked during a bus node's outage
	// isRevoked: from the revocation on, a refusal of revoked counts
	// under its id.
	isRevoked atomic.Bool
	// answered counts the answered requests by the key id their events
	// carry: "" for a key the verifier does not know (yet).
	amu      sync.Mutex
	answered map[string]int64
	// gate: a client past it waits (a kill is under way).
	sent, clientErrs, gate atomic.Int64
	lats                   [][]time.Duration // per client
	wg                     sync.WaitGroup
}

// send sends one request to verifier v; answered is false when no
// verifier answered (refused connection, cut, timeout).
func (tr *chaosTraffic) send(ctx context.Context, v int, secret string) (status int, lat time.Duration, answered bool) {
	addr := tr.r.verifierAddr(v)
	if addr == "" {
		return 0, 0, false
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/items", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	t := time.Now()
	resp, err := tr.client.Do(req)
	if err != nil {
		return 0, 0, false
	}
	resp.Body.Close()
	return resp.StatusCode, time.Since(t), true
}

func (tr *chaosTraffic) count(id string) {
	tr.amu.Lock()
	tr.answered[id]++
	tr.amu.Unlock()
}

// sendKey sends with key k to verifier v and counts an answer. Once the
// key is revoked, a refusal carries its id; before, a refusal is of a key
// the verifier does not know yet.
func (tr *chaosTraffic) sendKey(ctx context.Context, v int, k chaosKey) (int, bool) {
	st, _, ok := tr.send(ctx, v, k.secret)
	if ok {
		if st == http.StatusUnauthorized && !(k.id == tr.revoked.id && tr.isRevoked.Load()) {
			tr.count("") // not known to this verifier yet
		} else {
			tr.count(k.id)
		}
	}
	return st, ok
}

// waitAccepted waits until every verifier accepts the secrets.
func (tr *chaosTraffic) waitAccepted(ctx context.Context) error {
	for v := range tr.r.cfg.Verifiers {
		for _, k := range append(tr.keys[:1:1], tr.revoked) {
			if err := waitStatus(ctx, func() (int, bool) { return tr.sendKey(ctx, v, k) }, is200, time.Minute); err != nil {
				return fmt.Errorf("bench chaos: verifier %d does not accept a new key: %w", v, err)
			}
		}
	}
	return nil
}

// start starts the clients; they end when the events are sent or ctx ends
// (tr.wg).
func (tr *chaosTraffic) start(ctx context.Context) {
	t0 := time.Now()
	for c := range tr.r.cfg.Clients {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			tr.runClient(ctx, c, t0)
		}()
	}
}

// runClient is client c: it sends the next request, round-robin over the
// keys and verifiers, until the events are sent, retrying on another
// verifier a request no verifier answered.
func (tr *chaosTraffic) runClient(ctx context.Context, c int, t0 time.Time) {
	cfg := tr.r.cfg
	for ctx.Err() == nil {
		n := tr.sent.Add(1)
		if n > int64(cfg.Events) {
			return
		}
		// Past the next kill's mark while a kill is under way: wait for
		// it, so that every kill happens under traffic.
		for n > tr.gate.Load() && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		if cfg.Rate > 0 {
			due := t0.Add(time.Duration(float64(n) / cfg.Rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		k := int(n) % cfg.Keys
		for try := 0; ctx.Err() == nil; try++ {
			st, lat, ok := tr.send(ctx, int(n+int64(try))%cfg.Verifiers, tr.keys[k].secret)
			if ok {
				tr.count(tr.keys[k].id)
				tr.lats[c] = append(tr.lats[c], lat)
				if st != 200 {
					tr.r.fail(fmt.Errorf("key %s answered %d", tr.keys[k].id, st))
				}
				break
			}
			tr.clientErrs.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// measure fills in the answered requests, the client retries and the
// latency once the clients are done.
func (tr *chaosTraffic) measure(res *ChaosResult) {
	for _, n := range tr.answered {
		res.Answered += n
	}
	res.ClientErrs = tr.clientErrs.Load()
	var all []time.Duration
	for _, l := range tr.lats {
		all = append(all, l...)
	}
	res.P99MS = PercentileMS(all, 0.99)
}

// runKills makes the kills, spread over the traffic, in turn: an
// aggregator, the events' leader node (with a revocation while it is
// down), a verifier.
func (r *chaosRun) runKills(ctx context.Context, tr *chaosTraffic, res *ChaosResult) error {
	cfg := r.cfg
	res.RevokeMS = -1
	for j := range cfg.Kills {
		at := int64(cfg.Events) * int64(j+1) / int64(cfg.Kills+1)
		for tr.sent.Load() < at && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		if ctx.Err() != nil {
			break
		}
		tr.gate.Store(max(at+1, int64(cfg.Events)*int64(j+2)/int64(cfg.Kills+1)))
		var err error
		switch j % 3 {
		case 0:
			err = r.killAggregator(ctx, (j/3)%cfg.Aggregators)
		case 1:
			first := res.BusKills == 0
			err = r.killBusNode(ctx, func() error {
				if !first {
					return nil
				}
				return r.revokeDuringOutage(ctx, tr, res)
			})
			res.BusKills++
		case 2:
			err = r.restartVerifier(ctx, (j/3)%cfg.Verifiers)
		}
		if err != nil {
			return err
		}
		res.Kills++
		cfg.logf("bench chaos: kill %d/%d done at %d requests", j+1, cfg.Kills, tr.sent.Load())
		if err := r.supervise(ctx); err != nil {
			return err
		}
	}
	return nil
}

// revokeDuringOutage revokes tr.revoked while the bus node is down and
// waits until every live verifier refuses it, recording the time taken in
// res.RevokeMS.
func (r *chaosRun) revokeDuringOutage(ctx context.Context, tr *chaosTraffic, res *ChaosResult) error {
	t := time.Now()
	tr.isRevoked.Store(true)
	// ErrNotVisible: written, but the admin's own key table has not seen
	// it yet (its watch restarts after the node loss); what counts is that
	// the verifiers learn it. A write whose answer the dead node took is
	// retried, as an operator would; ErrConflict then says it is revoked.
	for try := 1; ; try++ {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		err := tr.svc.Revoke(rctx, tr.revoked.id, "bench chaos")
		rcancel()
		if err == nil || errors.Is(err, keys.ErrNotVisible) || (try > 1 && errors.Is(err, keys.ErrConflict)) {
			break
		}
		if try == 6 {
			return fmt.Errorf("revoke during the outage: %w", err)
		}
		r.cfg.logf("bench chaos: revoke during the outage, try %d: %v", try, err)
	}
	for v := range r.cfg.Verifiers {
		err := waitStatus(ctx, func() (int, bool) { return tr.sendKey(ctx, v, tr.revoked) }, refused, 30*time.Second)
		if err != nil {
			return fmt.Errorf("verifier %d still accepts the key revoked during the outage: %w", v, err)
		}
	}
	res.RevokeMS = float64(time.Since(t).Microseconds()) / 1000
	return nil
}

// stopVerifiersDraining stops the verifiers gracefully: their last batches
// are published. One that stops with events still in its spool (the bus
// took them slower than they came during an outage) starts again to
// publish them.
func (r *chaosRun) stopVerifiersDraining(ctx context.Context) error {
	for i := range r.vers {
		for try := 1; ; try++ {
			err := r.stopVerifier(i)
			if err == nil {
				break
			}
			if !spoolLeft(err) || try == 20 {
				return err
			}
			r.cfg.logf("bench chaos: verifier %d: %v; starting it again to drain its spool", i, err)
			if err := r.startVerifier(ctx, i); err != nil {
				return err
			}
			time.Sleep(10 * time.Second)
		}
	}
	return nil
}

// waitStored waits (up to 3 minutes) for the store to hold every answered
// request's event, then a little longer for a late duplicate to show.
func (r *chaosRun) waitStored(ctx context.Context, answered int64) error {
	p := Progress{Name: "bench chaos", Every: 2 * time.Second, W: r.cfg.progress()}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		n, err := r.cfg.Store.Count(ctx, "requests")
		if err != nil {
			return err
		}
		if int64(n) >= answered || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		p.Tick("stored %d of %d", n, answered)
		if err := r.supervise(ctx); err != nil {
			return fmt.Errorf("bench chaos: %w", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	return nil
}

// report prints the summary line and, on a loss, the events stream's
// state; it is the run's error when anything was lost or doubled.
func (r *chaosRun) report(ctx context.Context, res ChaosResult) error {
	cfg := r.cfg
	var s Summary
	s.Add("bench", "chaos")
	s.Add("bus", cfg.Bus)
	s.Add("events", cfg.Events)
	s.Add("answered", res.Answered)
	s.Add("stored", res.Distinct)
	s.Add("lost", res.Lost)
	s.Add("duplicated", res.Duplicated)
	s.Add("extra", res.Extra)
	s.Add("kills", res.Kills)
	s.Add("bus_kills", res.BusKills)
	s.Add("client_retries", res.ClientErrs)
	s.Add("aggregator_self_restarts", r.selfRestarts)
	s.Add("p99_ms", res.P99MS)
	s.Add("revoke_ms", res.RevokeMS)
	s.Add("elapsed_s", res.Elapsed.Seconds())
	s.Print(cfg.out())
	if res.OK() {
		return nil
	}
	if r.nats != nil {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		cfg.logf("bench chaos: %s", r.nats.Describe(dctx, "KEYMETER_EVENTS"))
		dcancel()
	}
	return fmt.Errorf("bench chaos: lost=%d duplicated=%d extra=%d (client retries %d)", res.Lost, res.Duplicated, res.Extra, res.ClientErrs)
}

// spoolLeft reports the verifier's "events left in the spool" stop error
// (the verifier has no sentinel for it).
func spoolLeft(err error) bool {
	return err != nil && strings.Contains(err.Error(), "left in the spool")
}

func is200(st int) bool   { return st == http.StatusOK }
func refused(st int) bool { return st == http.StatusUnauthorized || st == http.StatusForbidden }

// waitStatus calls f until its answer's status is one that want accepts,
// within limit.
func waitStatus(ctx context.Context, f func() (int, bool), want func(int) bool, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	last := "no answer"
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st, ok := f()
		if ok && want(st) {
			return nil
		}
		if ok {
			last = fmt.Sprintf("status %d", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not the status wanted within %s (last: %s)", limit, last)
}

func (r *chaosRun) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) < 5 {
		r.errs = append(r.errs, err)
	}
}

func (r *chaosRun) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return errors.Join(r.errs...)
}

func (r *chaosRun) startCluster(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	r.busCfg = busopen.Config{Backend: r.cfg.Bus, Prefix: "keymeter", Partitions: r.cfg.Partitions, Replicas: 3}
	var err error
	switch r.cfg.Bus {
	case "nats":
		r.nats, err = natscluster.Start(sctx, natscluster.Config{Dir: filepath.Join(r.cfg.Dir, "nats")})
		if err == nil {
			r.busCfg.NATSURL = r.nats.URLs()
		}
	case "kafka":
		r.kafka, err = kafkacluster.Start(sctx, kafkacluster.Config{Dir: filepath.Join(r.cfg.Dir, "kafka")})
		if err == nil {
			r.busCfg.KafkaBrokers = strings.Join(r.kafka.Brokers(), ",")
		}
	}
	if err != nil {
		return fmt.Errorf("bench chaos: %s cluster: %w", r.cfg.Bus, err)
	}
	return nil
}

// open opens one more connection to the cluster (each role has its own,
// as separate processes would).
func (r *chaosRun) open(ctx context.Context) (bus.Bus, error) {
	octx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	b, err := busopen.Open(octx, r.busCfg, "", r.log)
	if err != nil {
		return nil, fmt.Errorf("bench chaos: open the bus: %w", err)
	}
	r.mu.Lock()
	r.buses = append(r.buses, b)
	r.mu.Unlock()
	return b, nil
}

func closeBus(b bus.Bus) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = b.Close(ctx)
}

func (r *chaosRun) startAggregator(ctx context.Context, i int, parts []int) error {
	b, err := r.open(ctx)
	if err != nil {
		return err
	}
	ab, ok := b.(aggregator.Bus)
	if !ok {
		return fmt.Errorf("bench chaos: the %s bus cannot feed an aggregator", r.cfg.Bus)
	}
	var ttl time.Duration
	if r.cfg.Bus == "nats" {
		ttl = r.cfg.NATSLeases
	}
	a, err := aggregator.New(aggregator.Config{Group: "chaos", Partitions: parts, LeaseTTL: ttl, FlushInterval: 200 * time.Millisecond,
		MaxBlockEvents: 20_000, RetryBackoff: 50 * time.Millisecond, ShutdownGrace: time.Nanosecond},
		ab, r.cfg.Store, aggregator.WithLogger(r.log.With("aggregator", i)))
	if err != nil {
		return err
	}
	actx, cancel := context.WithCancel(context.Background())
	m := &chaosMember{parts: parts, cancel: cancel, done: make(chan error, 1), bus: b}
	go func() { m.done <- a.Run(actx) }()
	r.mu.Lock()
	r.aggs = setAt(r.aggs, i, m)
	r.mu.Unlock()
	return nil
}

// supervise restarts, as systemd or Kubernetes would, an aggregator whose
// run ended by itself (a fatal error such as a consumer it could not bind
// while the cluster elected leaders), counting it in res.
func (r *chaosRun) supervise(ctx context.Context) error {
	r.mu.Lock()
	var dead []int
	for i, m := range r.aggs {
		if m.cancel == nil {
			continue
		}
		select {
		case err := <-m.done:
			m.cancel()
			m.cancel = nil
			closeBus(m.bus)
			r.cfg.logf("bench chaos: aggregator %d stopped by itself (%v); restarting it", i, err)
			dead = append(dead, i)
		default:
		}
	}
	r.mu.Unlock()
	for _, i := range dead {
		r.selfRestarts++
		if err := r.startAggregator(ctx, i, r.aggs[i].parts); err != nil {
			return err
		}
	}
	return nil
}

// killAggregator ends aggregator i with no graceful flush (its run
// context ends with no shutdown grace and its connection closes), then
// starts a new one in its place (on NATS, on the same partitions).
func (r *chaosRun) killAggregator(ctx context.Context, i int) error {
	m := r.aggs[i]
	if nb, ok := m.bus.(*natsbus.Bus); ok && r.cfg.NATSLeases > 0 {
		// The connection goes first: a killed lease member neither
		// flushes nor gives up its leases; they move after the TTL.
		nb.Conn().Close()
	}
	m.cancel()
	err := <-m.done
	m.cancel = nil
	closeBus(m.bus)
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, bus.ErrConsumerLost) {
		return fmt.Errorf("aggregator %d: %w", i, err)
	}
	// context.Canceled: killed while it was still binding its consumers.
	// ErrConsumerLost: it had ended by itself (deliveries dropped by the
	// client), as supervise would have found.
	r.cfg.logf("bench chaos: killed aggregator %d", i)
	return r.startAggregator(ctx, i, m.parts)
}

func (r *chaosRun) startVerifier(ctx context.Context, i int) error {
	b, err := r.open(ctx)
	if err != nil {
		return err
	}
	v := &chaosVerifier{id: fmt.Sprintf("chaos-verifier-%d", i), done: make(chan error, 1), bus: b}
	if i < len(r.vers) {
		v.id = r.vers[i].id
	}
	dir := filepath.Join(r.cfg.Dir, v.id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	ready := make(chan [2]string, 1)
	vcfg := verifier.RunConfig{Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", DataDir: dir, VerifierID: v.id, Bus: b, Logger: r.log,
		HTTP:     verifier.HTTPConfig{Front: verifier.Fronts["envoy"]},
		OnListen: func(m, _, a net.Addr) { ready <- [2]string{m.String(), a.String()} }}
	vcfg.Emitter.DurableLog = r.cfg.DurableLog
	vctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	go func() { v.done <- verifier.Run(vctx, vcfg) }()
	select {
	case addrs := <-ready:
		// Traffic only once /readyz says its key table is loaded, as a
		// balancer's health check would.
		if err := waitStatus(ctx, func() (int, bool) {
			resp, err := http.Get("http://" + addrs[1] + "/readyz")
			if err != nil {
				return 0, false
			}
			resp.Body.Close()
			return resp.StatusCode, true
		}, is200, 3*time.Minute); err != nil { // a loaded machine with a bus node down takes a while
			cancel()
			return fmt.Errorf("bench chaos: verifier %d not ready: %w", i, err)
		}
		v.addr.Store(&addrs[0])
	case err := <-v.done:
		cancel()
		return fmt.Errorf("bench chaos: verifier %d: %w", i, err)
	case <-time.After(time.Minute):
		cancel()
		return fmt.Errorf("bench chaos: verifier %d did not listen within a minute", i)
	}
	r.mu.Lock()
	r.vers = setAt(r.vers, i, v)
	r.mu.Unlock()
	return nil
}

func (r *chaosRun) verifierAddr(i int) string {
	r.mu.Lock()
	v := r.vers[i]
	r.mu.Unlock()
	if p := v.addr.Load(); p != nil {
		return *p
	}
	return ""
}

// stopVerifier stops verifier i (closing its listener, flushing its
// events) and closes its connection.
func (r *chaosRun) stopVerifier(i int) error {
	r.mu.Lock()
	v := r.vers[i]
	r.mu.Unlock()
	if v.cancel == nil {
		return nil
	}
	v.addr.Store(nil)
	v.cancel()
	err := <-v.done
	v.cancel = nil
	closeBus(v.bus)
	if err != nil {
		return fmt.Errorf("bench chaos: verifier %d: %w", i, err)
	}
	return nil
}

// restartVerifier stops verifier i and starts it again on the same data
// directory (its spool) while the others carry the traffic.
func (r *chaosRun) restartVerifier(ctx context.Context, i int) error {
	if err := r.stopVerifier(i); err != nil {
		if !spoolLeft(err) {
			return err
		}
		// Not lost: the spool is on disk and the restart replays it.
		r.cfg.logf("bench chaos: verifier %d stopped with events in its spool (%v); the restart replays them", i, err)
	}
	r.cfg.logf("bench chaos: stopped verifier %d", i)
	return r.startVerifier(ctx, i)
}

// killBusNode kills (SIGKILL) the node leading the events, runs during
// while it is down, restarts it after the outage and waits until it
// serves again.
func (r *chaosRun) killBusNode(ctx context.Context, during func() error) error {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var node int
	var err error
	if r.nats != nil {
		node, _, err = r.nats.StreamLeader(lctx, "KEYMETER_EVENTS")
	} else {
		node, err = kafkaLeader(lctx, r.kafka, "keymeter.events", 0)
	}
	if err != nil {
		return fmt.Errorf("find the events leader: %w", err)
	}
	var kill func(int) error
	var restart func(context.Context, int) error
	if r.nats != nil {
		kill, restart = r.nats.Kill, r.nats.Restart
	} else {
		kill, restart = r.kafka.Kill, r.kafka.Restart
	}
	if err := kill(node); err != nil {
		return err
	}
	r.cfg.logf("bench chaos: killed bus node %d (leader of the events)", node+1)
	down := time.Now()
	if err := during(); err != nil {
		return err
	}
	if d := r.cfg.Outage - time.Since(down); d > 0 {
		time.Sleep(d)
	}
	rctx, rcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer rcancel()
	if err := restart(rctx, node); err != nil {
		return fmt.Errorf("restart bus node %d: %w", node+1, err)
	}
	r.cfg.logf("bench chaos: bus node %d back after %s", node+1, time.Since(down).Round(time.Millisecond))
	return nil
}

// kafkaLeader is the index of the node leading topic's partition.
func kafkaLeader(ctx context.Context, c *kafkacluster.Cluster, topic string, partition int) (int, error) {
	cl := &kafka.Client{Addr: kafka.TCP(c.Brokers()...), Timeout: 5 * time.Second}
	md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return -1, err
	}
	for _, t := range md.Topics {
		for _, p := range t.Partitions {
			if p.ID == partition {
				for i, n := range c.Nodes {
					if n.ID == p.Leader.ID {
						return i, nil
					}
				}
			}
		}
	}
	return -1, fmt.Errorf("no leader for %s/%d", topic, partition)
}

// tally compares the store with the answered requests per key.
func (r *chaosRun) tally(ctx context.Context, want map[string]int64, res *ChaosResult) error {
	db := r.cfg.Store
	q := func(sql string, scan func(store.Rows) error) error {
		return store.EachRow(ctx, db.Conn(), sql, store.Params{}, scan)
	}
	err := q(fmt.Sprintf("SELECT toUInt64(count()), toUInt64(uniqExact(event_id)) FROM `%s`.requests", db.Database()),
		func(rows store.Rows) error { return rows.Scan(&res.Stored, &res.Distinct) })
	if err != nil {
		return fmt.Errorf("bench chaos: count stored events: %w", err)
	}
	res.Duplicated = int64(res.Stored) - int64(res.Distinct)
	got := map[string]int64{}
	err = q(fmt.Sprintf("SELECT key_id, toUInt64(uniqExact(event_id)) FROM `%s`.requests GROUP BY key_id", db.Database()),
		func(rows store.Rows) error {
			var k string
			var n uint64
			if err := rows.Scan(&k, &n); err != nil {
				return err
			}
			got[k] = int64(n)
			return nil
		})
	if err != nil {
		return fmt.Errorf("bench chaos: count stored events per key: %w", err)
	}
	shown := 0
	for k, n := range want {
		if d := n - got[k]; d > 0 {
			res.Lost += d
			if shown++; shown <= 5 {
				r.cfg.logf("bench chaos: key %q: answered %d, stored %d", k, n, got[k])
			}
		} else {
			res.Extra -= d
		}
	}
	for k, n := range got {
		if _, ok := want[k]; !ok {
			res.Extra += n
		}
	}
	return nil
}

func (r *chaosRun) shutdown() {
	for i := range r.vers {
		_ = r.stopVerifier(i)
	}
	for i, m := range r.aggs {
		if m.cancel == nil {
			continue
		}
		m.cancel()
		select {
		case <-m.done:
		case <-time.After(30 * time.Second):
			r.cfg.logf("bench chaos: aggregator %d did not stop within 30s of its cancel", i)
		}
	}
	r.mu.Lock()
	buses := r.buses
	r.buses = nil
	r.mu.Unlock()
	for _, b := range buses {
		closeBus(b)
	}
	if r.nats != nil {
		r.nats.Close()
	}
	if r.kafka != nil {
		r.kafka.Close()
	}
}

// setAt puts v at index i of s, a replacement or (i == len(s)) the next one.
func setAt[T any](s []T, i int, v T) []T {
	if i < len(s) {
		s[i] = v
		return s
	}
	return append(s, v)
}
