package keys

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus/kafkabus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/testfix/kafkatest"
)

// On Kafka (no compare-and-set) a writer that read a key before its
// revocation (the aggregator's quota writer, another admin process) can
// write it back active afterwards, and that write is then the key's latest
// record: the only one a verifier started later receives in its snapshot
// (and the only one compaction keeps). The revocation must still hold
// there, whatever the versions of the stale writes (security test
// 2026-11-27, unconfirmed Kafka finding: confirmed).
func TestRevocationSurvivesStaleWritesOnKafka(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Two key partitions: the key's record and its revocation record may
	// land in different partitions, read in any order.
	b, err := kafkabus.New(ctx, kafkabus.Config{Brokers: kafkatest.Brokers(t), TopicPrefix: kafkatest.Prefix(t), Partitions: 1, KeyPartitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	running := watched(t, b, true)
	svc, err := NewService(ServiceConfig{KeyLog: b, Table: running})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	var secrets []Secret
	var stale []*keymeterv1.KeyState
	for range 4 {
		k, err := svc.Create(ctx, CreateParams{Project: "p", KeyLimits: KeyLimits{MonthlyQuota: 1000}})
		if err != nil {
			t.Fatal(err)
		}
		st, _ := svc.Get(k.State.GetId())
		ids, secrets, stale = append(ids, k.State.GetId()), append(secrets, k.Secret), append(stale, st)
	}
	for _, id := range ids {
		if err := svc.Revoke(ctx, id, "leaked"); err != nil {
			t.Fatal(err)
		}
	}
	// The stale writers: what the quota writer writes from a copy read
	// before the revocation (its version + 1, the revocation's version
	// too), and then, from a process that loaded that write, + 2.
	put := func(st *keymeterv1.KeyState) {
		t.Helper()
		raw, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.PutKey(ctx, st.GetId(), raw); err != nil {
			t.Fatal(err)
		}
	}
	var last uint64
	for i, st := range stale {
		for n := range 1 + i%2 {
			ns := proto.CloneOf(st)
			ns.QuotaUsed, ns.QuotaState = 500, keymeterv1.QuotaState_QUOTA_STATE_OK
			ns.Version += uint64(n + 1)
			last = ns.Version
			put(ns)
		}
		if err := running.WaitVersion(ctx, st.GetId(), last); err != nil {
			t.Fatal(err)
		}
	}
	check := func(who string, tbl *Table) {
		t.Helper()
		for i, id := range ids {
			if r := lookup(tbl, secrets[i]); r == nil || r.Status != StatusRevoked {
				t.Errorf("%s: key %s (stale writes %d) verifies as %+v, want revoked", who, id, 1+i%2, r)
			}
			if tbl.keepState {
				if st, ok := tbl.State(id); !ok || st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_REVOKED || st.GetRevokeReason() != "leaked" {
					t.Errorf("%s: key %s state %v", who, id, st)
				}
			}
		}
	}
	check("the running table", running)
	// Processes started after the stale writes: a verifier and an admin.
	check("a verifier started later", watched(t, b, false))
	later := watched(t, b, true)
	check("an admin table started later", later)

	// An admin process started later resumes nothing: its service's
	// writes carry the revocation.
	svc2, err := NewService(ServiceConfig{KeyLog: b, Table: later})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc2.Resume(ctx, ids[0]); !errors.Is(err, ErrConflict) {
		t.Fatalf("resume of a revoked key: %v", err)
	}

	// Deleting a revoked key deletes its revocation record too.
	if err := svc.Delete(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	if r := lookup(watched(t, b, false), secrets[1]); r != nil {
		t.Fatalf("a deleted revoked key came back: %+v", r)
	}
}
