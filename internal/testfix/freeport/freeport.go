// Package freeport hands out TCP ports on 127.0.0.1 for processes a test
// starts that bind the port themselves later (nats-server, Kafka, nginx,
// keymeter roles), or that are stopped and started again on the same port.
//
// A port the kernel picked (listen on port 0, then close) goes back to the
// kernel's ephemeral range, and any other bind of port 0 on the machine may
// get it before the process binds it: go test runs packages in parallel,
// a JVM takes seconds to bind, and a killed node is down for seconds. The
// ports here come from below the ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range), which the kernel never hands
// out by itself: only another caller of this package could pick the same
// one, and a random pick among thousands, checked free, makes that
// unlikely. This process never hands out a port twice.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the bottom of the range ports are picked from (above the
// well-known and registered ports this repository's services default to:
// Kafka 19092, ClickHouse 19000, NATS 4222, dev's 8080-9467).
const lowest = 20000

var (
	mu     sync.Mutex
	handed = map[int]bool{}
)

// Get returns one port free on 127.0.0.1 now.
func Get() (int, error) {
	ps, err := N(1)
	if err != nil {
		return 0, err
	}
	return ps[0], nil
}

// N returns n distinct ports free on 127.0.0.1 now.
func N(n int) ([]int, error) {
	hi := ephemeralLow()
	mu.Lock()
	defer mu.Unlock()
	var ports []int
	if hi-lowest < 1000 {
		// No room below the ephemeral range: the kernel's pick it is.
		for range n {
			p, err := kernelPick()
			if err != nil {
				return nil, err
			}
			ports = append(ports, p)
		}
		return ports, nil
	}
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("freeport: no free port in %d-%d after %d tries", lowest, hi-1, tries)
		}
		p := lowest + rand.IntN(hi-lowest)
		if handed[p] || !free(p) {
			continue
		}
		handed[p] = true
		ports = append(ports, p)
	}
	return ports, nil
}

// free reports whether p can be bound on 127.0.0.1 now.
func free(p int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

func kernelPick() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("freeport: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ephemeralLow is the bottom of the kernel's ephemeral port range (32768,
// Linux's default, when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return lo
}
