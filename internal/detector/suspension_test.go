package detector

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

// The detector's suspension timer lifts only its own suspension, and only
// while it is the one in force: never one a person made, whether the
// person suspended the key before or after the detection (security test
// 2026-11-27, finding 3).
func TestSuspensionTimerSparesManualSuspension(t *testing.T) {
	b := newBus(t)
	_, svc := natstest.Keys(t, b)
	ctx := t.Context()
	d, err := New(Config{Bus: b, Keys: svc})
	if err != nil {
		t.Fatal(err)
	}
	type resumed struct {
		id, sid string
		err     error
	}
	attempts := make(chan resumed, 16)
	d.resumed = func(id, sid string, err error) { attempts <- resumed{id, sid, err} }
	waitAttempt := func(id string) resumed {
		t.Helper()
		select {
		case r := <-attempts:
			if r.id != id {
				t.Fatalf("resume attempt on %s, want %s", r.id, id)
			}
			return r
		case <-time.After(60 * time.Second): // bounds a failing test only
			t.Fatal("the suspension timer never fired")
		}
		return resumed{}
	}
	newKey := func() string {
		k, err := svc.Create(ctx, keys.CreateParams{Project: "p"})
		if err != nil {
			t.Fatal(err)
		}
		return k.State.GetId()
	}
	suspendByRule := func(decID, id string, dur time.Duration) {
		t.Helper()
		dec := &keymeterv1.Decision{Id: decID, TimeUnixNano: time.Now().UnixNano(), RuleId: "r", Mode: keymeterv1.Mode_MODE_ENFORCE,
			Action: keymeterv1.Action_ACTION_SUSPEND, KeyId: id, DurationMs: dur.Milliseconds()}
		if err := d.carryOut(ctx, dec); err != nil {
			t.Fatal(err)
		}
	}
	status := func(id string) *keymeterv1.KeyState {
		t.Helper()
		st, err := svc.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	t.Run("operator first", func(t *testing.T) {
		id := newKey()
		if err := svc.Suspend(ctx, id); err != nil {
			t.Fatal(err)
		}
		manual := status(id).GetSuspensionId()
		if !strings.HasPrefix(manual, "manual:") {
			t.Fatalf("a person's suspension recorded as %q", manual)
		}
		suspendByRule("d1", id, 200*time.Millisecond)
		// The detection did not take the suspension over, so no timer
		// was armed; its id cannot lift the person's either.
		if st := status(id); st.GetSuspensionId() != manual || st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED {
			t.Fatalf("after the detection: %v %q", st.GetStatus(), st.GetSuspensionId())
		}
		if err := svc.ResumeSuspension(ctx, id, "decision:d1"); !errors.Is(err, keys.ErrConflict) {
			t.Fatalf("the detection's resume of a person's suspension: %v", err)
		}
		if st := status(id); st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED {
			t.Fatalf("operator's suspension lifted: %v", st.GetStatus())
		}
	})

	t.Run("detector first, then operator", func(t *testing.T) {
		id := newKey()
		suspendByRule("d2", id, time.Hour)
		if st := status(id); st.GetSuspensionId() != "decision:d2" || st.GetSuspendedUntilUnixNano() == 0 {
			t.Fatalf("detection's suspension recorded as %q until %d", st.GetSuspensionId(), st.GetSuspendedUntilUnixNano())
		}
		if err := svc.Suspend(ctx, id); err != nil { // the person, indefinitely
			t.Fatal(err)
		}
		d.resumeAfter(id, "decision:d2", time.Now(), "r") // the decision's timer, fired now (not in an hour)
		r := waitAttempt(id)
		if !errors.Is(r.err, keys.ErrConflict) {
			t.Fatalf("the timer's resume: %v, want a conflict", r.err)
		}
		if st := status(id); st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED || !strings.HasPrefix(st.GetSuspensionId(), "manual:") {
			t.Fatalf("operator's suspension lifted by the detector: %v %q", st.GetStatus(), st.GetSuspensionId())
		}
	})

	t.Run("detector alone", func(t *testing.T) {
		// The timer does lift its own suspension.
		id := newKey()
		suspendByRule("d3", id, 100*time.Millisecond)
		if r := waitAttempt(id); r.err != nil || r.sid != "decision:d3" {
			t.Fatalf("the timer's resume: %+v", r)
		}
		if st := status(id); st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_ACTIVE || st.GetSuspensionId() != "" {
			t.Fatalf("after the detection's suspension expired: %v %q", st.GetStatus(), st.GetSuspensionId())
		}
	})

	t.Run("a longer detection takes over", func(t *testing.T) {
		id := newKey()
		suspendByRule("d4", id, time.Hour)
		suspendByRule("d5", id, 2*time.Hour)
		d.resumeAfter(id, "decision:d4", time.Now(), "r") // d4's timer, fired now
		if r := waitAttempt(id); !errors.Is(r.err, keys.ErrConflict) || r.sid != "decision:d4" {
			t.Fatalf("the first timer's resume: %+v", r)
		}
		if st := status(id); st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED || st.GetSuspensionId() != "decision:d5" {
			t.Fatalf("the longer suspension: %v %q", st.GetStatus(), st.GetSuspensionId())
		}
		// A shorter one does not replace it.
		suspendByRule("d6", id, time.Millisecond)
		if st := status(id); st.GetSuspensionId() != "decision:d5" {
			t.Fatalf("a shorter suspension took over: %q", st.GetSuspensionId())
		}
		select {
		case r := <-attempts:
			t.Fatalf("a timer armed for a suspension not in force: %+v", r)
		default:
		}
	})
}
