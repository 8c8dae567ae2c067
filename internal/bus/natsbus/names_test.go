package natsbus

import "testing"

func TestPartitionOf(t *testing.T) {
	for _, c := range []struct {
		name, group string
		p           int
		ok          bool
	}{
		{consumerName("g", 3), "g", 3, true},
		{"g-p3", "g", 3, true}, // before names of their own
		{"g-p12_0123456789abcdef", "g", 12, true},
		{"g-p1_x-p0_0123456789abcdef", "g", 0, false}, // group "g-p1_x"
		{"g-p1_x-p0_0123456789abcdef", "g-p1_x", 0, true},
		{"g-p01_0123456789abcdef", "g", 0, false},
		{"gg-p1", "g", 0, false},
		{"g-p", "g", 0, false},
	} {
		p, ok := partitionOf(c.name, c.group)
		if ok != c.ok || (ok && p != c.p) {
			t.Errorf("partitionOf(%q, %q) = %d %v, want %d %v", c.name, c.group, p, ok, c.p, c.ok)
		}
	}
}
