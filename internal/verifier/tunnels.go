package verifier

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
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
// Anonymous tunnels (no slot) are only closed at shutdown (closeAll), so
// that every tunnel's event is emitted before the emitter flushes.
type tunnels struct {
	every time.Duration
	now   func() time.Time
	log   *slog.Logger

	mu      sync.Mutex
	open    map[*tunnel]struct{}
	running bool
	// active counts the handlers of hijacked requests still running (their
	// event not yet emitted); closing is set by closeAll.
	active  int
	closing bool
	// closed counts the tunnels closed because of their key.
	closed atomic.Uint64
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
// The request's handler calls done once its event is emitted.
func (ts *tunnels) add(c net.Conn, slot *keys.Slot, id string) net.Conn {
	t := &tunnel{Conn: c, slot: slot, id: id, ts: ts}
	ts.mu.Lock()
	ts.active++
	if ts.closing {
		ts.mu.Unlock()
		_ = c.Close() // shutting down: the handler's copy ends at once
		return t
	}
	ts.open[t] = struct{}{}
	start := !ts.running
	ts.running = true
	ts.mu.Unlock()
	if start {
		go ts.run()
	}
	return t
}

// done notes that a hijacked request's handler has emitted its event.
func (ts *tunnels) done() {
	ts.mu.Lock()
	ts.active--
	ts.mu.Unlock()
}

// closeAll closes every tunnel, and any hijacked later, and waits until
// their handlers have emitted their events or ctx ends. It returns how
// many it closed.
func (ts *tunnels) closeAll(ctx context.Context) int {
	ts.mu.Lock()
	ts.closing = true
	all := make([]*tunnel, 0, len(ts.open))
	for t := range ts.open {
		all = append(all, t)
	}
	ts.mu.Unlock()
	for _, t := range all {
		_ = t.Close()
	}
	for {
		ts.mu.Lock()
		n := ts.active
		ts.mu.Unlock()
		if n <= 0 {
			return len(all)
		}
		select {
		case <-ctx.Done():
			return len(all)
		case <-time.After(5 * time.Millisecond):
		}
	}
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
			if t.slot == nil {
				continue // anonymous: no key to lose
			}
			if r := t.slot.Record(); r == nil || !usable(r, now) {
				stale = append(stale, t)
			}
		}
		ts.mu.Unlock()
		for _, t := range stale {
			ts.log.Info("upgraded connection closed: its key may no longer be used", "key_id", t.id, "status", keyState(t.slot.Record(), now))
			ts.closed.Add(1)
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
