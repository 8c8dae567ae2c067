// Package demo is what keymeter dev adds to the pipeline to show it
// working: a demo admin token, demo keys, a demo upstream API and demo
// traffic with attacks. None of it runs in production roles.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/loadgen"
)

// AdminToken returns the demo admin token, created on first start in
// <dataDir>/admin-token (mode 0600; a file others can read is refused).
func AdminToken(dataDir string) (string, error) {
	p := filepath.Join(dataDir, "admin-token")
	if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s has mode %04o: others may read the admin token; chmod 600 it", p, fi.Mode().Perm())
	}
	if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	tok := "kmadm_" + hex.EncodeToString(raw)
	if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
		return "", err
	}
	return tok, nil
}

// KeysConfig configures Keys.
type KeysConfig struct {
	KeyLog bus.KeyLog
	Table  *keys.Table // loaded
	// File keeps the secrets (mode 0600): a demo convenience only.
	File string
	// Previous are the demo keys of an earlier run (read from File).
	Previous []loadgen.Key
	N        int
	Logger   *slog.Logger
}

// Keys keeps the previous demo keys that are still active, creates more
// until there are N, writes them to File and logs one line about them
// (not one per key).
func Keys(ctx context.Context, cfg KeysConfig) ([]loadgen.Key, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: cfg.KeyLog, Table: cfg.Table}, keys.WithLogger(QuietLogger(log)))
	if err != nil {
		return nil, err
	}
	var out []loadgen.Key
	for _, k := range cfg.Previous {
		if st, ok := cfg.Table.State(k.ID); ok && st.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_ACTIVE {
			out = append(out, k)
		}
	}
	kept := len(out)
	for i := len(out); i < cfg.N; i++ {
		c, err := svc.Create(ctx, keys.CreateParams{Project: fmt.Sprintf("proj_demo_%d", i%3), Name: fmt.Sprintf("demo %d", i), Owner: "dev",
			KeyLimits: keys.KeyLimits{RatePerS: 50, Burst: 100, MonthlyQuota: 5_000_000}})
		if err != nil {
			return nil, fmt.Errorf("demo key: %w", err)
		}
		out = append(out, loadgen.Key{ID: c.State.GetId(), Project: c.State.GetProject(), Secret: c.Secret.Reveal()})
	}
	log.Info("demo keys ready", "keys", len(out), "created", len(out)-kept, "file", cfg.File)
	var sb strings.Builder
	sb.WriteString("# demo keys of keymeter dev: key_id,project,secret (demo only: real secrets are never stored)\n")
	for _, k := range out {
		fmt.Fprintf(&sb, "%s,%s,%s\n", k.ID, k.Project, k.Secret)
	}
	if err := os.WriteFile(cfg.File, []byte(sb.String()), 0o600); err != nil {
		return nil, err
	}
	return out, nil
}

// Upstream is the demo API behind the verifier.
func Upstream() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"ok":true,"path":%q,"key_id":%q,"items":[1,2,3,4,5,6,7,8,9,10]}`+"\n", r.URL.Path, r.Header.Get("X-Keymeter-Key-Id"))
	})
}

// TrafficConfig configures Traffic.
type TrafficConfig struct {
	Target      string // the verifier's URL
	Keys        []loadgen.Key
	Rate        float64 // normal requests per second
	Attacks     []string
	AttackEvery time.Duration
	AttackAfter time.Duration
	Seed        uint64
	// OnResponse is called for every answer.
	OnResponse func(*loadgen.Request, int)
}

// Traffic runs the load generator in chunks until ctx ends; attacks take
// a key each, so the victims rotate through the keys.
func Traffic(ctx context.Context, cfg TrafficConfig) error {
	const chunk = 5 * time.Minute
	if len(cfg.Keys) == 0 {
		return fmt.Errorf("demo traffic: no keys")
	}
	for i := uint64(0); ctx.Err() == nil; i++ {
		lg := loadgen.Config{Scenarios: append([]string{"normal"}, cfg.Attacks...), Rate: cfg.Rate, Duration: chunk, Seed: cfg.Seed + i,
			AttackEvery: cfg.AttackEvery, AttackAfter: cfg.AttackAfter}
		if i > 0 {
			lg.AttackAfter = cfg.AttackEvery
		}
		off := int(i*7) % len(cfg.Keys)
		lg.Keys = append(append([]loadgen.Key{}, cfg.Keys[off:]...), cfg.Keys[:off]...)
		reqs, err := loadgen.Generate(lg)
		if err != nil {
			return err
		}
		if _, err := loadgen.SendHTTP(ctx, loadgen.HTTPConfig{Target: cfg.Target, OnResponse: cfg.OnResponse, Workers: 16}, reqs); err != nil {
			return err
		}
	}
	return nil
}

// QuietLogger passes on only the warnings and errors of log: for work that
// would otherwise log one line per item (demo keys).
func QuietLogger(log *slog.Logger) *slog.Logger {
	return slog.New(minLevel{Handler: log.Handler(), min: slog.LevelWarn})
}

type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{Handler: h.Handler.WithAttrs(as), min: h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{Handler: h.Handler.WithGroup(name), min: h.min}
}
