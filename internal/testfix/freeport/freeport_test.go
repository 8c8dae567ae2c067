package freeport

import (
	"net"
	"strconv"
	"testing"
)

// Ports come from below the kernel's ephemeral range, free, never twice.
func TestPortsBelowTheEphemeralRangeFreeAndDistinct(t *testing.T) {
	ps, err := N(50)
	if err != nil {
		t.Fatal(err)
	}
	one, err := Get()
	if err != nil {
		t.Fatal(err)
	}
	ps = append(ps, one)
	seen := map[int]bool{}
	for _, p := range ps {
		if ephemeralLow()-lowest >= 1000 && (p < lowest || p >= ephemeralLow()) {
			t.Errorf("port %d outside %d-%d", p, lowest, ephemeralLow()-1)
		}
		if seen[p] {
			t.Errorf("port %d handed out twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Errorf("port %d not free: %v", p, err)
			continue
		}
		l.Close()
	}
}
