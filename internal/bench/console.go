package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/billing"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/console"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/rules"
)

// ConsoleConfig is keymeter bench console: the server time of each
// console page over a store of Rows events.
type ConsoleConfig struct {
	DB      *store.DB // holds exactly Rows events from an earlier run, or none
	Backend string
	Rows    int
	Keys    int           // distinct keys in the generated history
	Span    time.Duration // the history's length, ending now
	Samples int           // timed loads of each page (after one untimed)
	// TableKeys are created in the key table (the keys page and the
	// overview's key counts read it); default 1000.
	TableKeys int
	DataDir   string // for the embedded NATS holding the key table
	Output
}

// ConsolePage is one page's figures.
type ConsolePage struct {
	Path               string
	First, Median, Max time.Duration // First: the untimed first load (cold caches)
}

// RunConsole builds the dataset unless the database holds it (StoreDataset,
// in the engine), gives one real key (on an embedded NATS key log) the
// history of one generated key, serves the API and console on loopback,
// signs in, and loads every page once untimed (first_ms: cold caches) and
// Samples times more (median_ms, max_ms). The time is the request's
// round trip on loopback, which is the server's time plus well under a
// millisecond.
func RunConsole(ctx context.Context, cfg ConsoleConfig) ([]ConsolePage, error) {
	if cfg.Rows <= 0 || cfg.Keys <= 0 || cfg.Samples <= 0 {
		return nil, fmt.Errorf("bench console: rows, keys and samples must be positive")
	}
	if cfg.TableKeys == 0 {
		cfg.TableKeys = 1000
	}
	db := cfg.DB
	if err := ensureDataset(ctx, cfg); err != nil {
		return nil, err
	}
	srv, err := natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: filepath.Join(cfg.DataDir, "nats")})
	if err != nil {
		return nil, err
	}
	defer srv.Shutdown()
	b, err := natsbus.New(ctx, natsbus.Config{Partitions: 2}, natsbus.WithEmbedded(srv))
	if err != nil {
		return nil, err
	}
	defer b.Close(context.Background())
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	table, err := keys.NewTable(keys.TableConfig{KeepState: true})
	if err != nil {
		return nil, err
	}
	go func() { _ = table.Run(tctx, b) }()
	select {
	case <-table.Ready():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: b, Table: table})
	if err != nil {
		return nil, err
	}
	keyID, err := createBenchKeys(ctx, svc, cfg.TableKeys)
	if err != nil {
		return nil, err
	}
	if err := adoptHistory(ctx, db, "key_7", keyID); err != nil {
		return nil, err
	}
	decID, decTime, err := benchDecisions(ctx, db, keyID)
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	defer close(done)
	base, c, stop, err := serveConsole(db, svc, table, done)
	if err != nil {
		return nil, err
	}
	defer stop()
	var out []ConsolePage
	for _, p := range consolePages(keyID, decID, decTime) {
		pg, err := timePage(c, base, p, cfg.Samples)
		if err != nil {
			return out, err
		}
		out = append(out, pg)
		var sum Summary
		sum.Add("bench", "console")
		sum.Add("backend", cfg.Backend)
		sum.Add("rows", cfg.Rows)
		sum.Add("page", p)
		sum.Add("first_ms", ms(pg.First))
		sum.Add("median_ms", ms(pg.Median))
		sum.Add("max_ms", ms(pg.Max))
		sum.Print(cfg.out())
	}
	return out, nil
}

// ensureDataset builds the dataset of cfg in cfg.DB unless it holds it.
func ensureDataset(ctx context.Context, cfg ConsoleConfig) error {
	db := cfg.DB
	if _, err := db.Migrate(ctx); err != nil {
		return err
	}
	n, err := db.Count(ctx, "requests")
	if err != nil {
		return err
	}
	if n == 0 {
		t0 := time.Now()
		if err := StoreDataset(ctx, db, cfg.Rows, cfg.Keys, cfg.Span, cfg.progress()); err != nil {
			return err
		}
		cfg.logf("bench console: dataset of %d rows built in %v", cfg.Rows, time.Since(t0).Round(time.Second))
	} else if n < uint64(cfg.Rows) {
		return fmt.Errorf("bench console: database %s holds %d rows, fewer than %d: use another --store-database", db.Database(), n, cfg.Rows)
	}
	return nil
}

// createBenchKeys creates n keys (at least one) in the key table and
// returns the first one's id, the key that takes over key_7's history.
func createBenchKeys(ctx context.Context, svc *keys.Service, n int) (string, error) {
	c0, err := svc.Create(ctx, keys.CreateParams{Project: "bench", Name: "bench key 0"})
	if err != nil {
		return "", err
	}
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(8)
	for i := 1; i < max(n, 1); i++ {
		eg.Go(func() error {
			_, err := svc.Create(ectx, keys.CreateParams{Project: "bench", Name: fmt.Sprintf("bench key %d", i)})
			return err
		})
	}
	return c0.State.GetId(), eg.Wait()
}

// serveConsole serves the API and console over db on loopback and returns
// their base URL, a client signed in as admin, and the function that stops
// serving.
func serveConsole(db *store.DB, svc *keys.Service, table *keys.Table, done <-chan struct{}) (string, *http.Client, func(), error) {
	set, err := rules.Resolve(nil).Load(detect.CompileOptions{})
	if err != nil {
		return "", nil, nil, err
	}
	eng, err := detect.New(detect.Config{Sink: detect.SinkFunc(func(*keymeterv1.Decision) {})}, set)
	if err != nil {
		return "", nil, nil, err
	}
	secret := "bench-console-" + fmt.Sprint(time.Now().UnixNano())
	tok, _ := api.ParseToken("admin:" + api.HashToken(secret))
	a, err := api.New(api.Config{Tokens: []api.Token{tok}, Keys: svc, KeyTable: table, Usage: db, Logs: db, Decision: db,
		Billing: &billing.Exporter{Store: db}, Rules: eng, Ready: table.Loaded, Audit: db,
		Console: console.Sources{Store: db, Rules: eng.RuleSet, Done: done}})
	if err != nil {
		return "", nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, nil, err
	}
	hs := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	base := "http://" + ln.Addr().String()
	c, err := consoleClient(base, secret)
	if err != nil {
		hs.Close()
		return "", nil, nil, err
	}
	return base, c, func() { hs.Close() }, nil
}

// consolePages are the pages RunConsole times, about the key keyID and the
// decision decID.
func consolePages(keyID, decID string, decTime time.Time) []string {
	return []string{"/console/", "/console/keys", "/console/keys/" + keyID + "?granularity=minute", "/console/keys/" + keyID + "?granularity=hour",
		"/console/keys/" + keyID + "?granularity=day", "/console/logs", "/console/logs?key=" + keyID, "/console/logs?project=bench&outcome=rate_limited",
		"/console/decisions", "/console/decisions/" + decID + "?" + url.Values{"key": {keyID}, "t": {decTime.Format(time.RFC3339Nano)}}.Encode(), "/console/usage?project=bench&granularity=hour",
		"/console/usage?project=bench&granularity=day", "/console/rules", "/console/audit", "/console/leaks", "/console/backtest"}
}

// timePage loads page p once untimed and samples times more.
func timePage(c *http.Client, base, p string, samples int) (ConsolePage, error) {
	var ds []time.Duration
	var first time.Duration
	for i := range samples + 1 {
		t0 := time.Now()
		resp, err := c.Get(base + p)
		if err != nil {
			return ConsolePage{}, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return ConsolePage{}, fmt.Errorf("bench console: %s answered %d", p, resp.StatusCode)
		}
		if i == 0 { // the first load warms caches: reported, not in the median
			first = time.Since(t0)
		} else {
			ds = append(ds, time.Since(t0))
		}
	}
	slices.Sort(ds)
	return ConsolePage{Path: p, First: first, Median: ds[len(ds)/2], Max: ds[len(ds)-1]}, nil
}

// adoptHistory copies the raw events of generated key from to the real key
// to (a key page needs a key the key table knows), with its rollups.
func adoptHistory(ctx context.Context, d *store.DB, from, to string) error {
	cols := strings.Split(benchColumns, ", ")
	sel := slices.Clone(cols)
	for i, c := range sel {
		switch c {
		case "key_id":
			sel[i] = "{to:String}"
		case "event_id":
			sel[i] = "concat(event_id, '-adopted')"
		}
	}
	p := store.Params{}.Str("from", from).Str("to", to)
	if err := d.Conn().Exec(ctx, onDB(d, `INSERT INTO {db}.requests (`+benchColumns+`) SELECT `+strings.Join(sel, ", ")+
		` FROM {db}.requests WHERE project = 'bench' AND key_id = {from:String}`), p); err != nil {
		return fmt.Errorf("bench console: copying %s's history: %w", from, err)
	}
	if err := d.Conn().Exec(ctx, onDB(d, `INSERT INTO {db}.rollup_input (`+rollupInputColumns+`)
SELECT toStartOfMinute(time) AS minute, project, key_id, outcome, route, country, count(), sum(bytes_in), sum(bytes_out),
 sum(cost_units), groupUniqArray(xxHash64(client_ip))
FROM {db}.requests WHERE project = 'bench' AND key_id = {to:String}
GROUP BY minute, project, key_id, outcome, route, country`), p); err != nil {
		return fmt.Errorf("bench console: rollups of %s: %w", to, err)
	}
	return nil
}

// benchDecisions stores, for the run's key, 1000 decisions, 100 leak
// reports and 1000 audit entries over the last day; it returns the id and
// time of one decision.
func benchDecisions(ctx context.Context, d *store.DB, keyID string) (string, time.Time, error) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	run := now.UnixNano()
	var decs []store.Decision
	for i := range 1000 {
		decs = append(decs, store.Decision{ID: fmt.Sprintf("bd-%d-%d", run, i), Time: now.Add(-time.Duration(i) * time.Minute), RuleID: "r",
			RuleVersion: 1, Mode: "enforce", Action: "alert", Project: "bench", KeyID: keyID, Evidence: `{"n":1}`})
	}
	for i := range 100 {
		decs = append(decs, store.Decision{ID: fmt.Sprintf("leak/%s/%d-%d", keyID, run, i), Time: now.Add(-time.Duration(i) * time.Minute),
			RuleID: "leak-report", RuleVersion: 1, Mode: "enforce", Action: "revoke", Project: "bench", KeyID: keyID, Reason: "leaked: reported by bench"})
	}
	if err := d.WriteDecisions(ctx, decs); err != nil {
		return "", time.Time{}, err
	}
	var audit []store.AuditEntry
	for i := range 1000 {
		audit = append(audit, store.AuditEntry{ID: fmt.Sprintf("au-%d-%d", run, i), Time: now.Add(-time.Duration(i) * time.Minute), Actor: "admin:0123abcd",
			Role: "admin", Action: "key.update", Target: keyID, Project: "bench", Detail: `{"rate_limit_per_s":5}`})
	}
	return decs[5].ID, decs[5].Time, d.WriteAudit(ctx, audit)
}

var (
	benchNonceRE = regexp.MustCompile(`name="nonce" value="([^"]+)"`)
)

// consoleClient signs in to the console at base with the admin secret.
func consoleClient(base, secret string) (*http.Client, error) {
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 2 * time.Minute, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(base + "/console/login")
	if err != nil {
		return nil, err
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := benchNonceRE.FindSubmatch(page)
	if m == nil {
		return nil, fmt.Errorf("bench console: no sign-in form")
	}
	resp, err = c.PostForm(base+"/console/login", url.Values{"nonce": {string(m[1])}, "token": {secret}})
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		return nil, fmt.Errorf("bench console: sign-in answered %d", resp.StatusCode)
	}
	return c, nil
}

// ConsoleRun is keymeter bench console: a data directory (temporary unless
// given), the store opened on it, then RunConsole.
type ConsoleRun struct {
	// Open opens the store with dataDir as the embedded store's data dir.
	Open    func(ctx context.Context, dataDir string) (*store.DB, error)
	DataDir string // empty: a temporary directory, removed unless Keep
	Keep    bool
	Config  ConsoleConfig
}

// Run runs the benchmark.
func (r ConsoleRun) Run(ctx context.Context) error {
	dir, cleanup, err := DataDir(r.DataDir, r.Keep, "console")
	if err != nil {
		return err
	}
	defer cleanup()
	db, err := r.Open(ctx, dir)
	if err != nil {
		return err
	}
	defer db.Close(context.Background())
	cfg := r.Config
	cfg.DB, cfg.DataDir = db, dir
	_, err = RunConsole(ctx, cfg)
	return err
}
