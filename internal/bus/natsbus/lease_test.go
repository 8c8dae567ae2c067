package natsbus

import "testing"

func TestRebalance(t *testing.T) {
	live := map[string]bool{"a": true, "b": true, "c": true}
	// a takes its share of free partitions.
	out, changed := rebalance(map[int]string{}, "a", live, 8)
	if !changed || len(out) != 3 {
		t.Fatalf("first member: %v %v, want 3 partitions (ceil 8/3)", out, changed)
	}
	// b takes a dead member's partitions, not a live one's.
	owner := map[int]string{0: "a", 1: "a", 2: "a", 3: "dead", 4: "dead"}
	out, changed = rebalance(owner, "b", live, 8)
	if !changed || out[0] != "a" || out[3] != "b" || out[4] != "b" || out[5] != "b" || len(out) != 6 {
		t.Fatalf("takeover: %v", out)
	}
	// a holding everything gives up what is beyond its share.
	all := map[int]string{}
	for p := range 8 {
		all[p] = "a"
	}
	out, _ = rebalance(all, "a", live, 8)
	if len(out) != 3 {
		t.Fatalf("over quota: %v, want 3 kept", out)
	}
	// Balanced: no change.
	bal := map[int]string{0: "a", 1: "a", 2: "a", 3: "b", 4: "b", 5: "b", 6: "c", 7: "c"}
	for _, m := range []string{"a", "b", "c"} {
		if _, changed := rebalance(bal, m, live, 8); changed {
			t.Fatalf("%s changed a balanced table", m)
		}
	}
}
