package natsbus

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Heartbeats: who is alive, and what a dead member leaves behind.
//
// A member heartbeats its key "<group>.alive.<id>" every tick; one that
// dies without Close (SIGKILL, OOM) leaves the key behind. Such keys must
// not pile up (every member reads them all on every tick) and must never
// count as live, not even for a new member's first TTL.
//
//   - Reading: one watch of the heartbeat keys' last revisions and server
//     timestamps per tick (metadata only), never a Get per key.
//   - Liveness by revision: the revisions are the bucket stream's sequence,
//     one order for all keys. A key whose revision is below that of this
//     member's own heartbeat written at least a TTL ago (by this member's
//     clock) has not changed for a TTL: dead. Exact, and no two machines'
//     clocks are compared. In a member's first TTL it has no such heartbeat
//     yet and compares the server's timestamps instead: a key last written
//     a TTL or more before this member's newest heartbeat is dead (both
//     stamped by the stream's leader).
//   - Removal: a key not changed for staleTTLs TTLs (by revision, as above)
//     is purged from the stream up to its revision, with no delete marker
//     left behind (kv.Delete would leave a marker message per key forever;
//     the markers of older versions' Close are purged the same way) and
//     never the newer heartbeat of a member that was only slow: the
//     purge keeps what came after the revision read. A member that was
//     silent that long was dead to everyone already; its next heartbeat
//     creates the key again.
//
// Not chosen: a bucket with MaxAge. This bucket also holds the table,
// whose generation must never go back, so the heartbeats would need a
// bucket of their own, and members of two versions during a rolling
// upgrade would then heartbeat into different buckets and each see the
// others dead; expiry also runs by the server's clock alone.

const (
	staleTTLs        = 3  // a heartbeat key unchanged this many TTLs is purged
	maxPurgesPerTick = 32 // bounds a tick's extra round trips; the rest wait for the next ticks
)

// beat is one of this member's heartbeats: the revision the server gave it
// and the local time its Put returned (the revision was assigned before).
type beat struct {
	rev uint64
	at  time.Time
}

// aliveEntry is a heartbeat key's last write.
type aliveEntry struct {
	id      string
	rev     uint64
	created time.Time // the server's timestamp
	marker  bool      // a delete marker (left by an older version's Close): never a member
}

// heartbeat writes this member's key and remembers the revision.
func (c *leaseConsumer) heartbeat(ctx context.Context) error {
	rev, err := c.kv.Put(ctx, c.aliveKey(c.id), []byte(time.Now().UTC().Format(time.RFC3339Nano)))
	if err != nil {
		return err
	}
	now := time.Now()
	c.beats = append(c.beats, beat{rev: rev, at: now})
	// Keep the newest beat at least staleTTLs TTLs old and all newer ones.
	cut, i := now.Add(-staleTTLs*c.ttl), 0
	for i+1 < len(c.beats) && !c.beats[i+1].at.After(cut) {
		i++
	}
	c.beats = c.beats[i:]
	return nil
}

// beatBefore is this member's newest heartbeat whose Put returned at or
// before t.
func (c *leaseConsumer) beatBefore(t time.Time) (beat, bool) {
	for i := len(c.beats) - 1; i >= 0; i-- {
		if !c.beats[i].at.After(t) {
			return c.beats[i], true
		}
	}
	return beat{}, false
}

// listAlive reads every heartbeat key's last revision and timestamp with
// one watch, delete markers included (so that they are purged too).
func (c *leaseConsumer) listAlive(ctx context.Context) ([]aliveEntry, error) {
	prefix := c.cfg.Group + ".alive."
	w, err := c.kv.Watch(ctx, prefix+"*", jetstream.MetaOnly())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	var out []aliveEntry
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("natsbus: watch of the heartbeat keys ended early")
			}
			if e == nil { // all current keys read
				return out, nil
			}
			out = append(out, aliveEntry{id: strings.TrimPrefix(e.Key(), prefix), rev: e.Revision(), created: e.Created(),
				marker: e.Operation() != jetstream.KeyValuePut})
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// liveMembers is the set of members whose heartbeat changed within the TTL
// (this one always), and the heartbeat keys unchanged for staleTTLs TTLs.
func (c *leaseConsumer) liveMembers(ctx context.Context) (map[string]bool, []aliveEntry, error) {
	entries, err := c.listAlive(ctx)
	if err != nil {
		return nil, nil, err
	}
	var serverNow time.Time // this member's newest heartbeat, by the server's clock
	for _, e := range entries {
		if e.id == c.id && !e.marker {
			serverNow = e.created
			if n := len(c.beats); n > 0 && e.rev < c.beats[n-1].rev {
				c.beats = nil // the bucket's stream went back (deleted and made again): revisions start over
			}
		}
	}
	now := time.Now()
	ref, byRev := c.beatBefore(now.Add(-c.ttl))
	old, purge := c.beatBefore(now.Add(-staleTTLs * c.ttl))
	live := map[string]bool{c.id: true}
	var stale []aliveEntry
	for _, e := range entries {
		if purge && e.rev < old.rev {
			stale = append(stale, e)
		}
		if e.id == c.id || e.marker {
			continue
		}
		var alive bool
		switch {
		case byRev:
			alive = e.rev > ref.rev
		case serverNow.IsZero(): // own key not read: cannot tell
			alive = true
		default:
			alive = serverNow.Sub(e.created) < c.ttl
		}
		if alive {
			live[e.id] = true
		}
	}
	return live, stale, nil
}

// purgeStale removes up to maxPurgesPerTick stale heartbeat keys: each
// key's messages up to the revision read, so a heartbeat written since
// stays. Failures only wait for the next tick.
func (c *leaseConsumer) purgeStale(ctx context.Context, stale []aliveEntry) {
	if len(stale) == 0 {
		return
	}
	if c.stream == nil {
		s, err := c.b.js.Stream(ctx, "KV_"+c.kv.Bucket())
		if err != nil {
			c.b.log.Debug("nats leases: purge of stale heartbeats", "group", c.cfg.Group, "err", err)
			return
		}
		c.stream = s
	}
	// Members purging at the same time mostly pick different keys.
	rand.Shuffle(len(stale), func(i, j int) { stale[i], stale[j] = stale[j], stale[i] })
	for _, e := range stale[:min(len(stale), maxPurgesPerTick)] {
		err := c.stream.Purge(ctx, jetstream.WithPurgeSubject(c.aliveSubject(e.id)), jetstream.WithPurgeSequence(e.rev+1))
		if err != nil {
			c.b.log.Debug("nats leases: purge of a stale heartbeat", "group", c.cfg.Group, "member", e.id, "err", err)
			return
		}
	}
}

// aliveSubject is the stream subject of member id's heartbeat key.
func (c *leaseConsumer) aliveSubject(id string) string {
	return "$KV." + c.kv.Bucket() + "." + c.aliveKey(id)
}

// forget removes this member's heartbeat key, without a delete marker;
// Close calls it once the loop has ended.
func (c *leaseConsumer) forget(ctx context.Context) {
	s, err := c.stream, error(nil)
	if s == nil {
		s, err = c.b.js.Stream(ctx, "KV_"+c.kv.Bucket())
	}
	if err == nil {
		err = s.Purge(ctx, jetstream.WithPurgeSubject(c.aliveSubject(c.id)))
	}
	if err != nil {
		_ = c.kv.Delete(ctx, c.aliveKey(c.id))
	}
}
