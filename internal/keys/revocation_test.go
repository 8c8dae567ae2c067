package keys

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// A revocation holds in a table whatever order the key's records come in:
// its revocation record (older version) after a later unrevoked write, or
// before it.
func TestTableRevocationFinalInAnyOrder(t *testing.T) {
	active, sec := newState(t, "p")
	active.Status, active.Version = keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, 1
	revoked := proto.CloneOf(active)
	revoked.Status, revoked.Version, revoked.RevokeReason, revoked.RevokedUnixNano = keymeterv1.KeyStatus_KEY_STATUS_REVOKED, 2, "leaked", 5
	later := proto.CloneOf(active) // a stale writer's, two versions on
	later.Version, later.QuotaUsed = 3, 7
	rev := stateUpdate(t, revoked)
	rev.ID = RevocationRecordID(active.GetId())
	for name, order := range map[string][]bus.KeyUpdate{
		"revocation record last":  {stateUpdate(t, active), stateUpdate(t, later), rev},
		"revocation record first": {rev, stateUpdate(t, active), stateUpdate(t, later)},
	} {
		for _, keep := range []bool{false, true} {
			tbl, err := NewTable(TableConfig{KeepState: keep})
			if err != nil {
				t.Fatal(err)
			}
			tbl.Apply(append(order, bus.KeyUpdate{EndOfSnapshot: true}))
			r := lookup(tbl, sec)
			if r == nil || r.Status != StatusRevoked || r.ID != active.GetId() || tbl.Len() != 1 {
				t.Errorf("%s (keep state %v): %+v, %d keys", name, keep, r, tbl.Len())
				continue
			}
			if keep {
				st, _ := tbl.State(active.GetId())
				if st.GetStatus() != keymeterv1.KeyStatus_KEY_STATUS_REVOKED || st.GetRevokeReason() != "leaked" {
					t.Errorf("%s: state %v", name, st)
				}
				if _, ok := tbl.State(rev.ID); ok {
					t.Errorf("%s: the revocation record listed as a key", name)
				}
			}
		}
	}
}
