package detector

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// TestSwitchedModeBeforeFirstFetch: a detector (re)started after a rule was
// switched to dry_run makes its first decision in dry_run: the decisions
// log's overrides are applied before events are fetched (regression: they
// were applied by a goroutine racing the first Fetch, so the first
// decisions after a restart could be enforced).
func TestSwitchedModeBeforeFirstFetch(t *testing.T) {
	b := newBus(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A busy decisions log: many decisions of other rules, then the switch.
	now := time.Now()
	for i := range 300 {
		raw, _ := proto.Marshal(&keymeterv1.Decision{Id: fmt.Sprintf("other/%d", i), TimeUnixNano: now.UnixNano(), RuleId: "other",
			Mode: keymeterv1.Mode_MODE_DRY_RUN, Action: keymeterv1.Action_ACTION_ALERT, Group: fmt.Sprintf("key_%d", i)})
		if err := b.PublishDecision(ctx, "other", raw); err != nil {
			t.Fatal(err)
		}
	}
	if err := (ModeSwitch{Bus: b}).SetRuleMode(ctx, "hot", "dry_run", "test"); err != nil {
		t.Fatal(err)
	}
	ev := event.Event{ID: "ev1", Time: now, Project: "p", KeyID: "key_first", Outcome: event.OutcomeValid, ClientIP: "192.0.2.1",
		Country: "DE", ASN: 3320, Method: "GET", Host: "api.example.com", Route: "/v1/items", Status: 200}
	a, err := b.Publisher().Publish(ctx, bus.Message{Key: ev.KeyID, BatchID: "first", Source: "test",
		Data: event.AppendBatch(nil, &event.Batch{ID: "first", Producer: "test", Created: now, Events: []event.Event{ev}})})
	if err != nil {
		t.Fatal(err)
	}
	<-a.Done()
	if err := a.Err(); err != nil {
		t.Fatal(err)
	}
	modes := make(chan keymeterv1.Mode, 16)
	d, err := New(Config{Bus: b, Logger: slog.New(slog.DiscardHandler),
		OnDecision: func(dec *keymeterv1.Decision, _ error) {
			if dec.GetRuleId() == "hot" {
				modes <- dec.GetMode()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := detect.New(detect.Config{Sink: d.Sink()}, modeSet(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	d.SetEngine(e)
	go func() { _ = d.Run(ctx) }()
	select {
	case m := <-modes:
		if m != keymeterv1.Mode_MODE_DRY_RUN {
			t.Fatalf("the first decision after the restart is %s, want dry_run (the switched mode)", m)
		}
	case <-time.After(time.Minute): // bounds a failing test only
		t.Fatal("no decision")
	}
}
