package console

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
)

// groupsBus is a real NATS bus that records the consumer groups created.
type groupsBus struct {
	bus.Bus
	mu     sync.Mutex
	groups []string
}

func (b *groupsBus) NewConsumer(ctx context.Context, cfg bus.ConsumerConfig) (bus.Consumer, error) {
	b.mu.Lock()
	b.groups = append(b.groups, cfg.Group)
	b.mu.Unlock()
	return b.Bus.NewConsumer(ctx, cfg)
}

func (b *groupsBus) DeleteGroup(ctx context.Context, group string) error {
	return b.Bus.(groupDeleter).DeleteGroup(ctx, group)
}

func (b *groupsBus) created() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.groups...)
}

func hubOnNATS(t *testing.T) (*liveHub, *groupsBus) {
	t.Helper()
	srv, err := natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	nb, err := natsbus.New(context.Background(), natsbus.Config{Partitions: 4}, natsbus.WithEmbedded(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nb.Close(context.Background()) })
	gb := &groupsBus{Bus: nb}
	c := &Console{cfg: Config{Sources: Sources{Bus: gb, LagGroups: []string{"none"}}}, log: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
	h := newLiveHub(c)
	return h, gb
}

// groupGone reports whether the group has no consumer left on the bus.
func groupGone(t *testing.T, b bus.Bus, group string) bool {
	t.Helper()
	m, err := b.Lag(context.Background(), group)
	if err != nil {
		t.Fatal(err)
	}
	return len(m) == 0
}

// TestLiveReconnectsReuseOneConsumer: 20 live streams opened and closed in
// a row share one consumer group, which is deleted when the hub stops
// (regression: every reconnect created a randomly named group, on NATS one
// durable consumer per partition lingering a minute).
func TestLiveReconnectsReuseOneConsumer(t *testing.T) {
	h, gb := hubOnNATS(t)
	for i := range 20 {
		ch, err := h.subscribe("s")
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(30 * time.Second); i == 0; time.Sleep(20 * time.Millisecond) {
			// The first stream's consumer is on the bus before it closes.
			if g := gb.created(); len(g) == 1 && !groupGone(t, gb, g[0]) {
				break
			}
			if time.Now().After(deadline) { // bounds a failing test only
				t.Fatal("the hub created no consumer")
			}
		}
		h.unsubscribe(ch)
	}
	h.close()
	groups := gb.created()
	if len(groups) == 0 || len(groups) > 2 {
		t.Fatalf("20 open/close cycles created %d consumer groups, want 1 or 2: %v", len(groups), groups)
	}
	for _, g := range groups {
		if !groupGone(t, gb, g) {
			t.Errorf("consumer group %s left on the bus after the hub stopped", g)
		}
	}
}

// TestLiveHubStopsAfterLinger: with no stream open the hub stops by itself
// after its linger time and deletes its consumer group.
func TestLiveHubStopsAfterLinger(t *testing.T) {
	h, gb := hubOnNATS(t)
	h.linger = 50 * time.Millisecond
	ch, err := h.subscribe("s")
	if err != nil {
		t.Fatal(err)
	}
	h.unsubscribe(ch)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		h.mu.Lock()
		stopped, done := h.stop == nil, h.done
		h.mu.Unlock()
		if stopped {
			<-done
			break
		}
		if time.Now().After(deadline) { // bounds a failing test only
			t.Fatal("the hub did not stop after its linger time")
		}
	}
	groups := gb.created()
	if len(groups) != 1 || !groupGone(t, gb, groups[0]) {
		t.Fatalf("after the linger: groups %v, want one, deleted", groups)
	}
}

// testWriter sends the hub's log to the test's output.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
