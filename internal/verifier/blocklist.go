package verifier

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// BlockList holds client addresses blocked by detection decisions, each
// until a deadline. Reads are one atomic load (and nothing more while the
// list is empty); writes copy the map.
type BlockList struct {
	m  atomic.Pointer[map[netip.Addr]int64]
	mu sync.Mutex
}

// Block blocks ip until the given time.
func (b *BlockList) Block(ip netip.Addr, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now().UnixNano()
	n := map[netip.Addr]int64{}
	if old := b.m.Load(); old != nil {
		for k, v := range *old {
			if v > now {
				n[k] = v
			}
		}
	}
	n[ip.Unmap()] = until.UnixNano()
	b.m.Store(&n)
}

// Blocked reports whether ip is blocked at now (unix ns).
func (b *BlockList) Blocked(ip netip.Addr, now int64) bool {
	m := b.m.Load()
	if m == nil || len(*m) == 0 {
		return false
	}
	until, ok := (*m)[ip.Unmap()]
	return ok && now < until
}

// Len is the number of entries (some may have expired).
func (b *BlockList) Len() int {
	if m := b.m.Load(); m != nil {
		return len(*m)
	}
	return 0
}

// Apply applies one encoded keymeterv1.Decision: enforced block_ip
// decisions block their client address for their duration (1h when none).
func (b *BlockList) Apply(data []byte, log *slog.Logger) {
	var d keymeterv1.Decision
	if err := proto.Unmarshal(data, &d); err != nil {
		log.Warn("skipping undecodable decision", "err", err)
		return
	}
	if d.GetAction() != keymeterv1.Action_ACTION_BLOCK_IP || d.GetMode() != keymeterv1.Mode_MODE_ENFORCE {
		return
	}
	ip, err := netip.ParseAddr(d.GetClientIp())
	if err != nil {
		log.Warn("block_ip decision without a valid client_ip", "decision", d.GetId(), "client_ip", d.GetClientIp())
		return
	}
	dur := time.Duration(d.GetDurationMs()) * time.Millisecond
	if dur <= 0 {
		dur = time.Hour
	}
	start := time.Now()
	if d.GetTimeUnixNano() > 0 {
		start = time.Unix(0, d.GetTimeUnixNano())
	}
	b.Block(ip, start.Add(dur))
	log.Info("client address blocked by detection", "client_ip", ip, "until", start.Add(dur), "rule", d.GetRuleId(), "decision", d.GetId())
}

// Run applies decisions from the bus until ctx ends.
//
// The decisions of the last day are applied first, so a verifier started
// after a block_ip decision still enforces it (each block lasts from its
// decision's time, so expired ones are no-ops).
func (b *BlockList) Run(ctx context.Context, ds bus.Decisions, log *slog.Logger) error {
	return ds.SubscribeDecisionsSince(ctx, time.Now().Add(-24*time.Hour), func(data []byte) { b.Apply(data, log) })
}
