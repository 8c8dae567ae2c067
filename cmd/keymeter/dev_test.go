package main

import (
	"bufio"
	"context"
	"os"
	"reflect"
	"sort"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

// make run's path: keymeter dev for a bounded time, demo traffic flows,
// usage is stored, an attack leads to a revocation, shutdown is clean, and
// a second start on the same data directory finds its state.
func TestDevRunsThePipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("runs keymeter dev for a minute; not in -short")
	}
	bin := keymeterBinary(t)
	dir := t.TempDir()
	rules, _ := filepath.Abs("../../rules")
	args := []string{"dev", "--data-dir", dir, "--rules", rules, "--nats-port", "0", "--proxy-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--summary-every", "2s", "--log-level", "warn", "--seed", "3"}
	// Until an attack led to a revocation and demo traffic was stored (the
	// deadline only bounds a failing test: --duration counted the start-up
	// too, which a loaded machine can stretch).
	last := runDevProcess(t, bin, args, func(f map[string]float64) bool {
		return f["revoked"] >= 1 && f["stored"] >= 1000 && f["requests"] >= 1000
	})
	if last["revoked"] < 1 {
		t.Fatalf("no attack led to a revocation within %s: %v", devRunLimit, last)
	}
	if last["stored"] < 1000 || last["requests"] < 1000 {
		t.Fatalf("demo traffic did not flow into the store: %v", last)
	}
	if last["stored"] < last["requests"] {
		t.Fatalf("shutdown left events unstored: %v", last)
	}
	// The stored history, backtested, gives the decisions the live run made.
	live := storedDecisions(t, dir)
	btFile := filepath.Join(t.TempDir(), "bt.ndjson")
	day := time.Now().UTC().Add(-time.Hour)
	out, err := exec.Command(bin, "rules", "backtest", "--rules", rules, "--data-dir", dir,
		"--from", day.Format(time.RFC3339), "--to", time.Now().UTC().Add(time.Hour).Format(time.RFC3339), "--decisions", btFile,
		"--profile-maturity", "5s", "--profile-novelty-grace", "5s").CombinedOutput() // dev's demo profile settings
	if err != nil {
		t.Fatalf("backtest of stored history: %v\n%s", err, out)
	}
	bt := backtestDecisions(t, btFile)
	if len(live) == 0 || !reflect.DeepEqual(live, bt) {
		t.Fatalf("live decisions %v\nbacktest decisions %v", live, bt)
	}
	// A second start on the same data: the keys and the store are still there.
	again := runDevProcess(t, bin, args, func(f map[string]float64) bool { return f["keys"] >= 21 && f["stored"] > 0 })
	if again["keys"] < 21 || again["stored"] == 0 {
		t.Fatalf("restart lost state: %v", again)
	}
}

var figure = regexp.MustCompile(`(\w+)=([0-9.]+)`)

// devRunLimit bounds a keymeter dev run of runDevProcess that never
// reaches its condition.
const devRunLimit = 3 * time.Minute

// runDevProcess runs keymeter dev until the figures of a summary line
// satisfy done (or devRunLimit passed), stops it with SIGTERM, and returns
// the figures of its last summary lines (the final one's over the
// periodic ones').
func runDevProcess(t *testing.T, bin string, args []string, done func(map[string]float64) bool) map[string]float64 {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(func() { _ = cmd.Process.Signal(syscall.SIGTERM) }) }
	limit := time.AfterFunc(devRunLimit, stop)
	defer limit.Stop()
	got := map[string]float64{}
	sc := bufio.NewScanner(out)
	lines := 0
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "stored=") {
			continue
		}
		lines++
		for _, m := range figure.FindAllStringSubmatch(line, -1) {
			v, _ := strconv.ParseFloat(m[2], 64)
			got[m[1]] = v
		}
		if done(got) {
			stop()
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("keymeter dev: %v\n%s", err, stderr.String())
	}
	if lines < 2 {
		t.Fatalf("keymeter dev printed %d summary lines\n%s", lines, stderr.String())
	}
	return got
}

// storedDecisions are the decisions the live run stored, as sorted
// "rule action group" strings.
func storedDecisions(t *testing.T, dir string) []string {
	t.Helper()
	db, err := chdb.Open(chdb.Config{DataDir: filepath.Join(dir, "clickhouse")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	ds, err := db.Decisions(context.Background(), store.DecisionQuery{Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range ds {
		out = append(out, d.RuleID+" "+d.Action+" "+d.GroupKey)
	}
	sort.Strings(out)
	return out
}

func backtestDecisions(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var d keymeterv1.Decision
		if err := protojson.Unmarshal([]byte(line), &d); err != nil {
			t.Fatal(err)
		}
		out = append(out, d.GetRuleId()+" "+detect.ActionName(d.GetAction())+" "+d.GetGroup())
	}
	sort.Strings(out)
	return out
}
