package event

import "testing"

// TestClientNet: the /24 or /48 in CIDR form. Before the fix, 2001:db8::1
// became "2001:db8:::/48" (not a network) and 2001:db8:1:2::1
// "2001:db8:1::/48" only by luck of its written form.
func TestClientNet(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"203.0.113.7", "203.0.113.0/24"},
		{"::ffff:203.0.113.7", "203.0.113.0/24"},
		{"2001:db8::1", "2001:db8::/48"},
		{"2001:db8:1:2::1", "2001:db8:1::/48"},
		{"2001:db8:abcd:ffff:1:2:3:4", "2001:db8:abcd::/48"},
		{"::1", "::/48"},
		{"fe80::1%eth0", "fe80::/48"},
		{"", ""},
		{"not-an-ip", "not-an-ip"},
	} {
		if got := ClientNet(c.in); got != c.want {
			t.Errorf("ClientNet(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if e := (Event{ClientIP: "2001:db8::1"}); e.PartitionKey() != "2001:db8::/48" {
		t.Errorf("PartitionKey: %q", e.PartitionKey())
	}
}
