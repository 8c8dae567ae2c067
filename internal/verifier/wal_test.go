package verifier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event"
)

// The SIGKILL test runs the emitter in a child process: this test binary,
// re-executed with walChildEnv set, serves HTTP on loopback and emits one
// event per request (its number in the route) before answering.
const walChildEnv = "KEYMETER_TEST_WAL_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(walChildEnv) != "" {
		os.Exit(walChild())
	}
	os.Exit(m.Run())
}

func walChild() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "wal child:", err); return 1 }
	ctx := context.Background()
	b, err := natsbus.New(ctx, natsbus.Config{URL: os.Getenv("WAL_NATS_URL"), CredsFile: os.Getenv("WAL_NATS_CREDS"),
		PublishTimeout: time.Second, Partitions: 4})
	if err != nil {
		return fail(err)
	}
	durable := os.Getenv("WAL_DURABLE") == "1"
	em, err := NewEmitter(EmitterConfig{Publisher: b.Publisher(), Partitions: b.Partitions(), Producer: "vkill",
		DataDir: os.Getenv("WAL_DATA"), DurableLog: durable, LogSegmentBytes: 64 << 10})
	if err != nil {
		return fail(err)
	}
	if os.Getenv(walChildEnv) == "recover" {
		// The restart: replay what the killed run left, then stop cleanly.
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := em.Close(cctx); err != nil {
			return fail(err)
		}
		fmt.Printf("recovered=%d\n", em.Stats().Recovered)
		if err := b.Close(cctx); err != nil {
			return fail(err)
		}
		return 0
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev := event.Event{Time: time.Now(), Project: "p", KeyID: "key_" + r.URL.Query().Get("k"), Outcome: event.OutcomeValid,
			ClientIP: "203.0.113.7", Method: "GET", Route: "/r/" + r.URL.Query().Get("n"), Status: 200}
		if !em.Emit(&ev) {
			http.Error(w, "dropped", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	fmt.Println(ln.Addr().String()) // the parent reads the address
	return fail(http.Serve(ln, h))
}

// TestDurableLogSurvivesSIGKILL: a verifier's emitter under load is killed
// with SIGKILL and restarted; every request answered before the kill has
// its event on the bus exactly once (batch ids deduplicated, as the
// aggregator does). Without the durable log this fails: the events of the
// batches in memory are lost.
func TestDurableLogSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	n := startNATS(t)
	b := n.connect(context.Background())
	dataDir := t.TempDir()
	child := func(mode string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run", "^$")
		cmd.Env = append(os.Environ(), walChildEnv+"="+mode, "WAL_NATS_URL="+n.url, "WAL_NATS_CREDS="+n.creds(),
			"WAL_DATA="+dataDir, "WAL_DURABLE=1")
		cmd.Stderr = os.Stderr
		return cmd
	}
	cmd := child("serve")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var line [64]byte
	k, err := out.Read(line[:])
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimSpace(string(line[:k]))

	// Load: 8 clients, each request numbered; SIGKILL once 3000 have been
	// answered (bounded: at most 20000 are sent).
	var answered sync.Map
	var nAnswered, next atomic.Int64
	killed := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > 20000 {
					return
				}
				resp, err := client.Get(fmt.Sprintf("http://%s/?n=%d&k=%d", addr, i, i%37))
				if err != nil {
					select {
					case <-killed:
						return
					default:
						t.Errorf("request %d: %v", i, err)
						return
					}
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode == 200 && string(body) == "ok" {
					answered.Store(i, true)
					nAnswered.Add(1)
				}
			}
		}()
	}
	deadline := time.Now().Add(60 * time.Second)
	for nAnswered.Load() < 3000 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	close(killed)
	_ = cmd.Wait()
	wg.Wait()
	want := map[string]bool{}
	answered.Range(func(k, _ any) bool { want["/r/"+strconv.FormatInt(k.(int64), 10)] = true; return true })
	if len(want) < 3000 {
		t.Fatalf("only %d requests answered before the kill", len(want))
	}

	rec := child("recover")
	rec.Stdout = os.Stderr
	if err := rec.Run(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	seen := collectRoutes(t, b, want, 30*time.Second)
	lost, doubled := 0, 0
	for r := range want {
		switch seen[r] {
		case 0:
			lost++
		case 1:
		default:
			doubled++
		}
	}
	for r, c := range seen {
		if c > 1 && !want[r] {
			doubled++ // an event of an unanswered request, twice
		}
	}
	t.Logf("answered=%d events=%d lost=%d doubled=%d", len(want), len(seen), lost, doubled)
	if lost > 0 || doubled > 0 {
		t.Fatalf("answered=%d: lost=%d doubled=%d", len(want), lost, doubled)
	}
	if ents, _ := os.ReadDir(filepath.Join(dataDir, "log")); len(ents) > 0 {
		t.Errorf("the restart's clean stop left %d log segments", len(ents))
	}
}

// collectRoutes reads every batch once per batch id (the aggregator's
// deduplication) and counts events per route, until every wanted route
// arrived and the bus is quiet.
func collectRoutes(t *testing.T, b bus.Bus, want map[string]bool, deadline time.Duration) map[string]int {
	t.Helper()
	ctx := context.Background()
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "walcheck"})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close(context.Background())
	seen := map[string]int{}
	batches := map[string]bool{}
	var batch event.Batch
	have := 0
	end := time.Now().Add(deadline)
	quiet := 0
	for time.Now().Before(end) && (have < len(want) || quiet < 3) {
		ds, err := cons.Fetch(ctx, 100, 200*time.Millisecond)
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			quiet++
		} else {
			quiet = 0
		}
		for _, d := range ds {
			if err := event.DecodeBatch(d.Data, &batch); err != nil {
				t.Fatal(err)
			}
			if !batches[batch.ID] {
				batches[strings.Clone(batch.ID)] = true
				for i := range batch.Events {
					r := strings.Clone(batch.Events[i].Route)
					seen[r]++
					if seen[r] == 1 && want[r] {
						have++
					}
				}
			}
			_ = cons.Ack(ctx, d)
		}
	}
	return seen
}

// TestWALRecovery: sealed batches not acknowledged come back under their
// ids, acknowledged ones do not, the unsealed tail forms one batch per
// partition whose id is the same at every recovery, and a torn last record
// is ignored.
func TestWALRecovery(t *testing.T) {
	dir := t.TempDir()
	w, err := openWAL(dir, 1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	var scratch []byte
	ev := func(id string, p int) {
		e := event.Event{ID: id, Time: time.Unix(1700000000, 0), KeyID: "key_" + id, Outcome: event.OutcomeValid}
		scratch = w.event(p, &e, scratch)
	}
	ev("a1", 0)
	ev("a2", 0)
	ev("b1", 1)
	w.seal(0, 2, "batch-a", 1, nil)
	ev("b2", 1)
	w.seal(1, 2, "batch-b", 3, nil)
	ev("c1", 0)
	ev("d1", 2)
	if err := w.commit(); err != nil {
		t.Fatal(err)
	}
	w.done("batch-b")
	// A torn record: the process died in the middle of a write.
	w.mu.Lock()
	w.appendRecord(walEvent, []byte{0, 1, 2, 3, 4, 5})
	w.buf = w.buf[:len(w.buf)-3]
	_ = w.writeLocked(true)
	w.mu.Unlock()
	_ = w.f.Close()

	summary := func() string {
		rec, err := recoverWAL(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(rec.files) != 1 {
			t.Fatalf("%d log files", len(rec.files))
		}
		var out []string
		for _, b := range rec.batches {
			var ids []string
			for _, e := range b.events {
				ids = append(ids, e.ID)
			}
			out = append(out, b.id+"="+strings.Join(ids, ","))
		}
		return strings.Join(out, " ")
	}
	got := summary()
	if want := "batch-a=a1,a2 c1.t=c1 d1.t=d1"; got != want {
		t.Fatalf("recovered %q, want %q", got, want)
	}
	if again := summary(); again != got {
		t.Fatalf("second recovery %q differs from the first %q", again, got)
	}
}

// TestWALTwoRunsInOneDir: a run's log starts with a boot record, so the
// events an earlier run left unsealed in the same directory form batches
// of their own and a later run's seal takes only its own events.
func TestWALTwoRunsInOneDir(t *testing.T) {
	dir := t.TempDir()
	var scratch []byte
	ev := func(w *wal, id string) {
		e := event.Event{ID: id, Time: time.Unix(1700000000, 0), KeyID: "key_a", Outcome: event.OutcomeValid}
		scratch = w.event(0, &e, scratch)
	}
	w1, err := openWAL(dir, 1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	ev(w1, "r1-1")
	ev(w1, "r1-2")
	if err := w1.close(false); err != nil {
		t.Fatal(err)
	}
	w2, err := openWAL(dir, 1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	ev(w2, "r2-1")
	w2.seal(0, 1, "r2-b1", 1, nil)
	ev(w2, "r2-2")
	if err := w2.close(false); err != nil {
		t.Fatal(err)
	}
	if got, want := recoveredBatches(t, dir), "r1-1.t=r1-1,r1-2 r2-b1=r2-1 r2-2.t=r2-2"; got != want {
		t.Fatalf("recovered %q, want %q", got, want)
	}
}

// recoveredBatches recovers dir's log and describes its batches as
// "<batch id>=<event id>,<event id> ...".
func recoveredBatches(t *testing.T, dir string) string {
	t.Helper()
	rec, err := recoverWAL(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range rec.batches {
		var ids []string
		for _, e := range b.events {
			ids = append(ids, e.ID)
		}
		got = append(got, b.id+"="+strings.Join(ids, ","))
	}
	return strings.Join(got, " ")
}
