package detector

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

const modeRule = `id: hot
version: 1
name: hot
severity: low
mode: enforce
match: key_id != ""
aggregate: {group_by: [key_id], window: 1h}
actions:
  - {type: alert, when: "count >= 1"}
`

type modeEngine struct {
	e    *detect.Engine
	mu   sync.Mutex
	seen []keymeterv1.Mode
}

func newModeEngine(t *testing.T, version int) *modeEngine {
	t.Helper()
	me := &modeEngine{}
	set := modeSet(t, version)
	e, err := detect.New(detect.Config{Sink: detect.SinkFunc(func(d *keymeterv1.Decision) {
		me.mu.Lock()
		me.seen = append(me.seen, d.GetMode())
		me.mu.Unlock()
	})}, set)
	if err != nil {
		t.Fatal(err)
	}
	me.e = e
	return me
}

func modeSet(t *testing.T, version int) *detect.RuleSet {
	t.Helper()
	rules, err := detect.ParseFile("hot.yaml", []byte(replaceVersion(modeRule, version)))
	if err != nil {
		t.Fatal(err)
	}
	set, err := detect.Compile(rules, detect.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func replaceVersion(s string, v int) string {
	return fmt.Sprintf("id: hot\nversion: %d\n", v) + s[len("id: hot\nversion: 1\n"):]
}

// fire makes the rule fire once for a fresh key and returns the mode of
// the decision.
func (me *modeEngine) fire(t *testing.T, key string) keymeterv1.Mode {
	t.Helper()
	me.e.Process(&event.Event{ID: key, Time: time.Now(), KeyID: key, Outcome: event.OutcomeValid, ClientIP: "192.0.2.1"})
	me.mu.Lock()
	defer me.mu.Unlock()
	if len(me.seen) == 0 {
		t.Fatalf("%s: no decision", key)
	}
	m := me.seen[len(me.seen)-1]
	me.seen = nil
	return m
}

// waitOverride polls until the engine shows the wanted override (the bus
// delivers asynchronously); the deadline only bounds a failing test.
func waitOverride(t *testing.T, e *detect.Engine, want string) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); ; {
		e.Flush()
		if rs := e.Stats().Rules; len(rs) == 1 && rs[0].Override == want {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("override %q never applied: %+v", want, e.Stats().Rules)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRuleModeOverride: an override published on the bus turns an enforce
// rule's decisions into dry-run ones and back, survives a hot reload, and
// reaches a detector started later through the replay of the log.
func TestRuleModeOverride(t *testing.T) {
	b := newBus(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	me := newModeEngine(t, 1)
	if err := FollowRuleModes(ctx, b, me.e, log); err != nil {
		t.Fatal(err)
	}
	if m := me.fire(t, "k0"); m != keymeterv1.Mode_MODE_ENFORCE {
		t.Fatalf("before any override: %s", m)
	}
	sw := ModeSwitch{Bus: b, Known: me.e.HasRule}
	if err := sw.SetRuleMode(ctx, "nope", "dry_run", "test"); err == nil {
		t.Fatal("unknown rule accepted")
	}
	if err := sw.SetRuleMode(ctx, "hot", "off", "test"); err == nil {
		t.Fatal("bad mode accepted")
	}
	if err := sw.SetRuleMode(ctx, "hot", "dry_run", "test"); err != nil {
		t.Fatal(err)
	}
	waitOverride(t, me.e, "dry_run")
	if m := me.fire(t, "k1"); m != keymeterv1.Mode_MODE_DRY_RUN {
		t.Fatalf("after dry_run override: %s", m)
	}
	if rs := me.e.Stats().Rules; rs[0].Mode != "enforce" || rs[0].Effective != "dry_run" {
		t.Fatalf("stats: %+v", rs[0])
	}
	// A hot reload (a new version of the file) keeps the override.
	me.e.Swap(modeSet(t, 2))
	if m := me.fire(t, "k2"); m != keymeterv1.Mode_MODE_DRY_RUN {
		t.Fatalf("after reload: %s", m)
	}
	// A detector started now gets the override by replay.
	late := newModeEngine(t, 1)
	if err := FollowRuleModes(ctx, b, late.e, log); err != nil {
		t.Fatal(err)
	}
	waitOverride(t, late.e, "dry_run")
	if m := late.fire(t, "k3"); m != keymeterv1.Mode_MODE_DRY_RUN {
		t.Fatalf("late detector: %s", m)
	}
	// And back to enforce.
	if err := sw.SetRuleMode(ctx, "hot", "enforce", "test"); err != nil {
		t.Fatal(err)
	}
	waitOverride(t, me.e, "enforce")
	if m := me.fire(t, "k4"); m != keymeterv1.Mode_MODE_ENFORCE {
		t.Fatalf("after enforce override: %s", m)
	}
}
