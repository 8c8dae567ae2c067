package keys

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// A revocation record (RevocationRecordID) never makes a key by itself: on
// a key log without compare-and-set it may come after the key's tombstone
// (a retried Revoke, or the key's and its record's partitions read in
// either order), and a deleted key came back, revoked, for good (outside
// review 2026-11-27). A record that comes before its key's own record
// still revokes it.
func TestRevocationRecordAloneMakesNoKey(t *testing.T) {
	st, sec := newState(t, "p")
	st.Status, st.Version, st.RevokeReason = keymeterv1.KeyStatus_KEY_STATUS_REVOKED, 2, "leaked"
	rev := stateUpdate(t, proto.CloneOf(st))
	rev.ID = RevocationRecordID(st.GetId())
	newTable := func() *Table {
		tbl, err := NewTable(TableConfig{KeepState: true})
		if err != nil {
			t.Fatal(err)
		}
		tbl.Apply([]bus.KeyUpdate{{EndOfSnapshot: true}})
		return tbl
	}

	t.Run("after the key's tombstone", func(t *testing.T) {
		tbl := newTable()
		for _, u := range []bus.KeyUpdate{stateUpdate(t, st), {ID: st.GetId(), Deleted: true}, rev} {
			tbl.Apply([]bus.KeyUpdate{u})
		}
		if r := lookup(tbl, sec); r != nil || tbl.Len() != 0 {
			t.Fatalf("deleted key back from its revocation record: %+v, %d keys", r, tbl.Len())
		}
		tbl.Apply([]bus.KeyUpdate{{ID: rev.ID, Deleted: true}})
		if len(tbl.pendingRevoked) != 0 {
			t.Fatalf("revocation record kept after its tombstone: %v", tbl.pendingRevoked)
		}
	})

	t.Run("before a stale active record", func(t *testing.T) {
		tbl := newTable()
		active := proto.CloneOf(st)
		active.Status, active.Version, active.RevokeReason = keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, 3, ""
		for _, u := range []bus.KeyUpdate{rev, stateUpdate(t, active)} {
			tbl.Apply([]bus.KeyUpdate{u})
		}
		r := lookup(tbl, sec)
		if r == nil || r.Status != StatusRevoked {
			t.Fatalf("key written without its earlier revocation: %+v, want revoked", r)
		}
		if got, ok := tbl.stateOf(st.GetId()); !ok || got.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_REVOKED || got.GetRevokeReason() != "leaked" {
			t.Fatalf("state %v, want revoked with its reason", got)
		}
	})
}
