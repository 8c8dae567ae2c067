package detector

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

// history is stored events in memory, oldest first.
type history []event.Event

func (h history) ScanEvents(_ context.Context, from, to time.Time, _ int, fn func(event.Event) error) error {
	for _, e := range h {
		if !e.Time.Before(from) && e.Time.Before(to) {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return nil
}

func newBus(t *testing.T) *natsbus.Bus {
	t.Helper()
	srv, err := natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	b, err := natsbus.New(context.Background(), natsbus.Config{Partitions: 2}, natsbus.WithEmbedded(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

// TestAssemble: the role refuses to start on a bad rule file, and warm-starts
// the key profiles from stored history without making decisions on it.
func TestAssemble(t *testing.T) {
	b := newBus(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("id: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Assemble(context.Background(), RunConfig{Rules: []string{dir}, Bus: b}); err == nil || !strings.Contains(err.Error(), "bad.yaml") {
		t.Fatalf("bad rules: %v", err)
	}
	if _, err := Assemble(context.Background(), RunConfig{Rules: []string{dir}}); err == nil || !strings.Contains(err.Error(), "Bus") {
		t.Fatalf("no bus: %v", err)
	}
	// A rule that would alert on every key seen twice, so decisions on
	// history would show.
	rule := `id: seen
version: 1
name: seen
severity: low
mode: enforce
match: key_id != ""
aggregate: {group_by: [key_id], window: 1h}
actions:
  - {type: alert, when: "count >= 2 && profile.events >= 0"}
`
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte(rule), 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var h history
	for i := 0; i < 600; i++ {
		h = append(h, event.Event{ID: fmt.Sprint(i), Time: now.Add(-10*time.Hour + time.Duration(i)*time.Minute), KeyID: fmt.Sprintf("key_%d", i%7),
			Outcome: event.OutcomeValid, ClientIP: "192.0.2.1", Country: "DE", ASN: 3320})
	}
	r, err := Assemble(context.Background(), RunConfig{Rules: []string{dir}, Bus: b, History: h})
	if err != nil {
		t.Fatal(err)
	}
	r.Engine().Flush()
	st := r.Engine().Stats()
	if st.Profiles.Keys != 7 || st.Events != 600 {
		t.Fatalf("warm start: %+v", st)
	}
	if n := len(r.det.decisions); n != 0 {
		t.Fatalf("%d decisions made on history", n)
	}
}

// heldResumes is the key service with the detector's Resume calls held
// until release is closed, each reported on resumed once done: the test
// looks at the suspended key before its expiry can lift it, however long
// a loaded machine takes to carry out the decisions (more than their
// 300 ms at times).
type heldResumes struct {
	*keys.Service
	release chan struct{}
	resumed chan string
}

func (h heldResumes) ResumeSuspension(ctx context.Context, id, sid string) error {
	<-h.release
	err := h.Service.ResumeSuspension(ctx, id, sid)
	h.resumed <- id
	return err
}

// TestSuspensionExpires: an enforced suspension with a duration is lifted
// when it expires; a revocation is not undone.
func TestSuspensionExpires(t *testing.T) {
	b := newBus(t)
	_, svc := natstest.Keys(t, b)
	ctx := t.Context()
	held := heldResumes{Service: svc, release: make(chan struct{}), resumed: make(chan string, 2)}
	d, err := New(Config{Bus: b, Keys: held})
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := svc.Create(ctx, keys.CreateParams{Project: "p"})
	k2, _ := svc.Create(ctx, keys.CreateParams{Project: "p"})
	now := time.Now()
	for _, dec := range []*keymeterv1.Decision{
		{Id: "s", TimeUnixNano: now.UnixNano(), RuleId: "r", Mode: keymeterv1.Mode_MODE_ENFORCE, Action: keymeterv1.Action_ACTION_SUSPEND, KeyId: k1.State.GetId(), DurationMs: 300},
		{Id: "v", TimeUnixNano: now.UnixNano(), RuleId: "r", Mode: keymeterv1.Mode_MODE_ENFORCE, Action: keymeterv1.Action_ACTION_SUSPEND, KeyId: k2.State.GetId(), DurationMs: 300},
	} {
		if err := d.carryOut(ctx, dec); err != nil {
			t.Fatal(err)
		}
	}
	if err := svc.Revoke(ctx, k2.State.GetId(), "by a person"); err != nil {
		t.Fatal(err)
	}
	if st, _ := svc.Get(k1.State.GetId()); st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED {
		t.Fatalf("not suspended: %v", st.GetStatus())
	}
	close(held.release)
	// Both suspensions expire (the deadline only bounds a failing test).
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case id := <-held.resumed:
			got[id] = true
		case <-time.After(30 * time.Second):
			t.Fatalf("suspensions not lifted within 30s of their expiry (resumed: %v)", got)
		}
	}
	if !got[k1.State.GetId()] || !got[k2.State.GetId()] {
		t.Fatalf("resumed %v, want %s and %s", got, k1.State.GetId(), k2.State.GetId())
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, _ := svc.Get(k1.State.GetId())
		if st.GetStatus() == keymeterv1.KeyStatus_KEY_STATUS_ACTIVE {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("suspension did not expire: %v", st.GetStatus())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st, _ := svc.Get(k2.State.GetId()); st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_REVOKED {
		t.Fatalf("a revoked key was resumed: %v", st.GetStatus())
	}
}
