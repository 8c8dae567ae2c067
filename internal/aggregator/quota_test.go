package aggregator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
)

func TestQuotaTransitionsPublishedAndSigned(t *testing.T) {
	b, db := newBus(t), newStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	table, err := keys.NewTable(keys.TableConfig{KeepState: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = table.Run(ctx, b) }()
	st := &keymeterv1.KeyState{Id: "key_q", Project: "proj_q", Status: keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, MonthlyQuota: 100, Version: 1, Hash: make([]byte, 32)}
	raw, _ := proto.Marshal(st)
	if err := b.PutKey(ctx, "key_q", raw); err != nil {
		t.Fatal(err)
	}
	if err := table.WaitVersion(ctx, "key_q", 1); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var hooks []aggregator.WebhookPayload
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Header.Get("X-Keymeter-Signature") != aggregator.Sign("s3cret", body) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var p aggregator.WebhookPayload
		_ = json.Unmarshal(body, &p)
		mu.Lock()
		hooks = append(hooks, p)
		mu.Unlock()
	}))
	defer hook.Close()

	q, err := aggregator.NewQuotas(aggregator.QuotaConfig{WebhookURL: hook.URL, WebhookSecret: "s3cret", Keys: table, KeyLog: b, Usage: db})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	block := func(from, n int) []event.Event {
		var ev []event.Event
		for i := from; i < from+n; i++ {
			ev = append(ev, event.Event{ID: fmt.Sprintf("q-%d", i), Time: now, Project: "proj_q", KeyID: "key_q", Outcome: event.OutcomeValid, Status: 200})
		}
		return ev
	}
	// stateAfter stores a block and returns the quota state the table
	// holds once the record published for it (usage used) is back from
	// the bus: the next block's update compare-and-sets over the revision
	// the table holds, so it must not start earlier. The deadline only
	// bounds a failing test (a fixed 100 ms sleep was too short under load).
	stateAfter := func(ev []event.Event, token string, used uint64) keymeterv1.QuotaState {
		t.Helper()
		if err := db.InsertEvents(ctx, token, ev); err != nil {
			t.Fatal(err)
		}
		q.Stored(ctx, ev)
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			s, _ := table.State("key_q")
			if s.GetQuotaUsed() >= used {
				return s.GetQuotaState()
			}
			if time.Now().After(deadline) {
				t.Fatalf("published usage %d (state %v) within 30s of storing up to %d events", s.GetQuotaUsed(), s.GetQuotaState(), used)
			}
		}
	}
	if s := stateAfter(block(0, 50), "t1", 50); s != keymeterv1.QuotaState_QUOTA_STATE_OK {
		t.Fatalf("50/100: state %v", s)
	}
	if s := stateAfter(block(50, 35), "t2", 85); s != keymeterv1.QuotaState_QUOTA_STATE_WARNING {
		t.Fatalf("85/100: state %v", s)
	}
	if s := stateAfter(block(85, 20), "t3", 105); s != keymeterv1.QuotaState_QUOTA_STATE_EXCEEDED {
		t.Fatalf("105/100: state %v", s)
	}
	s, _ := table.State("key_q")
	if s.GetQuotaUsed() != 105 {
		t.Fatalf("published usage %d, want 105", s.GetQuotaUsed())
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(hooks)
		mu.Unlock()
		if n >= 3 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	var got []string
	for _, h := range hooks {
		got = append(got, h.To)
	}
	if len(got) != 3 || !slices.Contains(got, "ok") || !slices.Contains(got, "warning") || !slices.Contains(got, "exceeded") {
		t.Fatalf("webhooks: %v", got)
	}
}

func TestQuotaConfigValidate(t *testing.T) {
	for _, c := range []aggregator.QuotaConfig{{Period: "year"}, {WarnRatio: 1.5}, {WebhookURL: "http://x"}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	// Every problem is reported at once, and Validate changes nothing.
	c := aggregator.QuotaConfig{Period: "year", WarnRatio: 1.5, WebhookURL: "http://x"}
	err := c.Validate()
	for _, want := range []string{"period", "warn ratio", "webhook"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
	if c.Now != nil || c.PublishStep != 0 {
		t.Errorf("Validate filled defaults: %+v", c)
	}
	if _, err := aggregator.NewQuotas(aggregator.QuotaConfig{}); err == nil || !strings.Contains(err.Error(), "required") {
		t.Errorf("NewQuotas without dependencies: %v", err)
	}
	if _, err := aggregator.NewQuotas(aggregator.QuotaConfig{Keys: staleStates{}, KeyLog: newBus(t), Usage: newStore(t)}, aggregator.WithQuotaLogger(nil)); err == nil {
		t.Error("WithQuotaLogger(nil) accepted")
	}
}

func TestConfigValidate(t *testing.T) {
	c := aggregator.Config{Group: "a b", MaxBlockEvents: -1, FlushInterval: time.Hour}
	err := c.Validate()
	for _, want := range []string{"group", "max-block-events", "flush-interval"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
	if c.AckWait != 0 {
		t.Error("Validate filled defaults")
	}
}

// staleStates answers with the state and revision the aggregator read
// before a revocation it has not seen yet.
type staleStates struct {
	st  *keymeterv1.KeyState
	rev uint64
}

func (s staleStates) State(string) (*keymeterv1.KeyState, bool) { return proto.CloneOf(s.st), true }
func (s staleStates) StateRevision(string) (*keymeterv1.KeyState, uint64, bool) {
	return proto.CloneOf(s.st), s.rev, true
}

// A quota update made from a stale copy must not undo a revocation.
func TestQuotaUpdateNeverUndoesARevocation(t *testing.T) {
	b, db := newBus(t), newStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	table, err := keys.NewTable(keys.TableConfig{KeepState: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = table.Run(ctx, b) }()
	<-table.Ready()
	svc, err := keys.NewService(keys.ServiceConfig{KeyLog: b, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	k, err := svc.Create(ctx, keys.CreateParams{Project: "proj_cas", KeyLimits: keys.KeyLimits{MonthlyQuota: 10}})
	if err != nil {
		t.Fatal(err)
	}
	stale, rev, _ := table.StateRevision(k.State.GetId())
	if err := svc.Revoke(ctx, k.State.GetId(), "leaked"); err != nil {
		t.Fatal(err)
	}
	q, err := aggregator.NewQuotas(aggregator.QuotaConfig{Keys: staleStates{stale, rev}, KeyLog: b, Usage: db})
	if err != nil {
		t.Fatal(err)
	}
	var evs []event.Event
	for i := range 20 {
		evs = append(evs, event.Event{ID: fmt.Sprintf("cas-%d", i), Time: time.Now(), Project: "proj_cas", KeyID: k.State.GetId(), Outcome: event.OutcomeValid})
	}
	if err := db.InsertEvents(ctx, "cas", evs); err != nil {
		t.Fatal(err)
	}
	q.Stored(ctx, evs)
	time.Sleep(200 * time.Millisecond)
	// A new verifier's snapshot is the key log's latest record.
	fresh, err := keys.NewTable(keys.TableConfig{KeepState: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = fresh.Run(ctx, b) }()
	<-fresh.Ready()
	st, _ := fresh.State(k.State.GetId())
	if st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_REVOKED {
		t.Fatalf("after a stale quota update the key log holds status %v", st.GetStatus())
	}
}
