package natsbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Each bind of a group's partition creates a durable consumer of its own,
// named "<group>-p<partition>_<16 hex digits>", and deletes the ones
// before it. A name of its own, not one per group and partition: a member
// that lost the partition may still ack a batch it stored just before
// (its insert passed the fence, its ack came late), and the server routes
// an ack by consumer name. Sent to a new consumer of the same name, such
// an ack set that consumer's delivery floor to the old consumer's delivery
// sequence, and the new owner's acks below it were confirmed but ignored
// (TestStaleAckAfterTakeover): its batches stayed pending and came again
// after AckWait, again and again until its own delivery sequence passed
// the old one. Sent to a deleted consumer, it is dropped.

// consumerName is a new name for a consumer of group's partition p.
func consumerName(group string, p int) string {
	var raw [8]byte
	_, _ = rand.Read(raw[:])
	return group + "-p" + strconv.Itoa(p) + "_" + hex.EncodeToString(raw[:])
}

// partitionOf reports which partition of group the consumer name reads:
// a name consumerName made, or "<group>-p<partition>" (before names of
// their own).
func partitionOf(name, group string) (int, bool) {
	rest, ok := strings.CutPrefix(name, group+"-p")
	if !ok {
		return 0, false
	}
	num, suffix, own := strings.Cut(rest, "_")
	if own {
		if len(suffix) != 16 || strings.Trim(suffix, "0123456789abcdef") != "" {
			return 0, false
		}
	}
	p, err := strconv.Atoi(num)
	if err != nil || p < 0 || strconv.Itoa(p) != num {
		return 0, false
	}
	return p, true
}

// groupConsumers lists group's consumers on the events stream by
// partition.
func (b *Bus) groupConsumers(ctx context.Context, group string) (map[int][]string, error) {
	s, err := b.js.Stream(ctx, b.streams.events)
	if err != nil {
		return nil, err
	}
	out := map[int][]string{}
	names := s.ConsumerNames(ctx)
	for name := range names.Name() {
		if p, ok := partitionOf(name, group); ok {
			out[p] = append(out[p], name)
		}
	}
	if err := names.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// currentConsumer is the newest of group's consumers of partition p (nil
// when there is none).
func (b *Bus) currentConsumer(ctx context.Context, names []string) (*jetstream.ConsumerInfo, error) {
	var cur *jetstream.ConsumerInfo
	for _, name := range names {
		c, err := b.js.Consumer(ctx, b.streams.events, name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		info, err := c.Info(ctx)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if cur == nil || info.Created.After(cur.Created) {
			cur = info
		}
	}
	return cur, nil
}

// replacedBy reports whether another consumer of the group's partition
// exists besides name: then name was deleted by a takeover, not lost
// for a moment in a leader election.
func (b *Bus) replacedBy(ctx context.Context, group string, p int, name string) bool {
	cs, err := b.groupConsumers(ctx, group)
	if err != nil {
		return false
	}
	for _, n := range cs[p] {
		if n != name {
			return true
		}
	}
	return false
}
