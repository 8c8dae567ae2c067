package verifier

import (
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/keys"
)

// DefaultTunnelCheck is how often the key of every upgraded connection
// (WebSocket and other 101 Switching Protocols tunnels) is checked when
// HTTPConfig.TunnelCheck is zero.
const DefaultTunnelCheck = time.Second

// tunnels tracks the connections that allowed requests upgraded (the
// handler hijacked them: ReverseProxy does on a 101 from the upstream),
// each with its key's slot, and closes a connection once its key may no
// longer be used: revoked, suspended, expired, rotated out past its grace,
// or deleted. The key table updates the slot's record when the key-state
// log (the bus) brings the change; a sweep reads those records every
// interval, so a revoked key's tunnels close at most one interval after
// the verifier learned of it. The sweep runs only while tunnels are open.
type tunnels struct {
	every time.Duration
	now   func() time.Time
	log   *slog.Logger

	mu      sync.Mutex
	open    map[*tunnel]struct{}
	running bool
}

func newTunnels(every time.Duration, log *slog.Logger) *tunnels {
	if every <= 0 {
		every = DefaultTunnelCheck
	}
	return &tunnels{every: every, now: time.Now, log: log, open: make(map[*tunnel]struct{})}
}

// tunnel is a hijacked connection of a key.
type tunnel struct {
	net.Conn
	slot *keys.Slot
	id   string
	ts   *tunnels
	once sync.Once
}

// Close closes the connection and stops tracking it.
func (t *tunnel) Close() error {
	t.once.Do(func() { t.ts.remove(t) })
	return t.Conn.Close()
}

// ReadFrom and CloseWrite keep what the connection offers the proxy's copy
// (splice, half-close) behind the wrapper.
func (t *tunnel) ReadFrom(r io.Reader) (int64, error) { return io.Copy(t.Conn, r) }

func (t *tunnel) CloseWrite() error {
	if cw, ok := t.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return t.Close()
}

// add tracks c, upgraded by a request of the key in slot (id is its key
// id, for the log), and returns the connection to hand the handler.
func (ts *tunnels) add(c net.Conn, slot *keys.Slot, id string) net.Conn {
	t := &tunnel{Conn: c, slot: slot, id: id, ts: ts}
	ts.mu.Lock()
	ts.open[t] = struct{}{}
	start := !ts.running
	ts.running = true
	ts.mu.Unlock()
	if start {
		go ts.run()
	}
	return t
}

func (ts *tunnels) remove(t *tunnel) {
	ts.mu.Lock()
	delete(ts.open, t)
	ts.mu.Unlock()
}

// count is the number of open tunnels.
func (ts *tunnels) count() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return len(ts.open)
}

// run sweeps until no tunnel is open.
func (ts *tunnels) run() {
	tick := time.NewTicker(ts.every)
	defer tick.Stop()
	var stale []*tunnel
	for range tick.C {
		now := ts.now().UnixNano()
		stale = stale[:0]
		ts.mu.Lock()
		if len(ts.open) == 0 {
			ts.running = false
			ts.mu.Unlock()
			return
		}
		for t := range ts.open {
			if r := t.slot.Record(); r == nil || !usable(r, now) {
				stale = append(stale, t)
			}
		}
		ts.mu.Unlock()
		for _, t := range stale {
			ts.log.Info("upgraded connection closed: its key may no longer be used", "key_id", t.id, "status", keyState(t.slot.Record(), now))
			_ = t.Close()
		}
	}
}

// keyState names why a record is not usable, for the log.
func keyState(r *keys.Record, now int64) string {
	switch {
	case r == nil:
		return "deleted"
	case r.Status == keys.StatusSuspended:
		return "suspended"
	case r.Status == keys.StatusRevoked, r.Status == keys.StatusDeleted:
		return "revoked"
	case r.Status != keys.StatusActive:
		return "unknown"
	case r.ExpiresAt != 0 && now >= r.ExpiresAt:
		return "expired"
	case r.GraceUntil != 0 && now >= r.GraceUntil:
		return "rotated out"
	}
	return "active"
}
