package verifier

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

// Batches and the bus's message size.
//
// A batch is closed before its encoded size would pass batchLimit (the
// collector adds eventBound per event), and the event fields a client
// chooses are bounded (fields.go), so batches fit the bus. Should one not
// (a Kafka broker configured below the producer, a NATS server with a
// smaller max_payload after a reconnect, a spool or durable log written by
// a version without these bounds), the bus refuses it with bus.ErrTooLarge:
// that is permanent, and the batch goes to the spool, whose replayer
// publishes it split in halves (publishSplit), recursively, down to single
// events; an event too large alone is set aside in DataDir/deadletter and
// counted (keymeter_verifier_events_deadlettered_total). Nothing is retried
// as it is, so an oversized batch never blocks the spool.

// maxDeadLetterBytes bounds what one run writes to DataDir/deadletter;
// beyond it dead-lettered events are only counted and logged.
const maxDeadLetterBytes = 64 << 20

// replayLogInterval is the least time between two replay progress or
// failure log lines.
const replayLogInterval = 30 * time.Second

// batchLimit is the most bytes a batch's encoding may take: MaxBatchBytes,
// or the publisher's message size less a margin for the headers (the
// CloudEvents attributes and Nats-Msg-Id take a few hundred bytes, the
// Kafka key and record overhead less than 100).
func (e *Emitter) batchLimit() int {
	if e.cfg.MaxBatchBytes > 0 {
		return e.cfg.MaxBatchBytes
	}
	max := bus.MaxMessageBytes(e.cfg.Publisher)
	return max - min(4096, max/8)
}

// eventBound is at least the bytes ev takes in an encoded batch: its
// strings, and for each of its 18 fields a tag and a length or varint
// (10 strings at most 2+5 bytes, 8 varints at most 2+10), and the field's
// own tag and length in the batch.
func eventBound(ev *event.Event) int {
	return len(ev.ID) + len(ev.Project) + len(ev.KeyID) + len(ev.ClientIP) + len(ev.Country) +
		len(ev.Method) + len(ev.Host) + len(ev.Route) + len(ev.UserAgent) + len(ev.VerifierID) +
		10*7 + 8*12 + 1 + 5
}

// batchOverhead is at least the bytes of a batch's own fields (id, which
// is prefix + "b" + a sequence, producer, created).
func batchOverhead(producer, prefix string) int {
	return len(prefix) + 21 + len(producer) + 3*7 + 11
}

// publishSplit publishes m, which the bus refused as too large (cause),
// as two halves, each split again while it is refused, down to single
// events; an event refused alone goes to the dead-letter directory. It
// returns how many events were dead-lettered, and the first other publish
// error (then m stays in the spool and is retried whole).
//
// Batch ids. The halves of batch id X are X.0 and X.1 (their halves
// X.0.0, X.0.1, ...): a function of the parent's id and its events only
// (a half is the first len/2 events), so that a replay of the same spooled
// batch publishes the same halves under the same ids, and the bus's and
// the aggregator's batch-id deduplication see a half published before a
// failure again as a duplicate. A parent id is never stored (the bus
// refused it whole), so no event is under two stored ids through the
// split. Where the split could differ between attempts (the bus's limit
// changed between two runs, so a half splits further or not at all), the
// retry is marked Resent (replayOne sets Emitter.tried on any failure, and
// a spool file is marked before its publish), which makes the aggregator
// check every event by id: each is stored once either way. The halves
// inherit m.Resent, and m.Key, so that they stay in m's partition.
// An event dead-lettered before a later half failed is dead-lettered (and
// counted) again by the retry: its file is the same, reasons.log gets a
// second line.
func (e *Emitter) publishSplit(m bus.Message, cause error) (int, error) {
	var b event.Batch
	if err := event.DecodeBatch(m.Data, &b); err != nil || len(b.Events) == 0 {
		reason := fmt.Sprintf("too large for the bus (%v) and cannot be split: undecodable batch: %v", cause, err)
		// The number of events is unknown: count it as one.
		e.deadLetter(m, 1, reason)
		return 1, nil
	}
	return e.splitBatch(m, &b, cause)
}

func (e *Emitter) splitBatch(m bus.Message, b *event.Batch, cause error) (int, error) {
	if len(b.Events) == 1 {
		e.deadLetter(m, 1, fmt.Sprintf("event %s too large for the bus alone: %v", b.Events[0].ID, cause))
		return 1, nil
	}
	e.split.Add(1)
	half := len(b.Events) / 2
	dead := 0
	for i, evs := range [2][]event.Event{b.Events[:half], b.Events[half:]} {
		cb := event.Batch{ID: m.BatchID + "." + strconv.Itoa(i), Producer: b.Producer, Created: b.Created, Events: evs}
		cm := bus.Message{Key: m.Key, BatchID: cb.ID, Source: m.Source, Data: event.AppendBatch(nil, &cb), Resent: m.Resent}
		err := e.publishWait(cm)
		if errors.Is(err, bus.ErrTooLarge) {
			var d int
			d, err = e.splitBatch(cm, &cb, err)
			dead += d
		}
		if err != nil {
			return dead, err
		}
	}
	return dead, nil
}

// deadLetter sets aside n events of m that the bus cannot take: the
// batch's encoding goes to DataDir/deadletter/<batch id>.batch (up to
// maxDeadLetterBytes per run) and a line with the reason to
// DataDir/deadletter/reasons.log. They are counted (Stats.DeadLettered)
// and logged at most once per 10 s.
func (e *Emitter) deadLetter(m bus.Message, n int, reason string) {
	total := e.deadLettered.Add(uint64(n))
	kept := "deadletter directory"
	if err := e.writeDeadLetter(m, n, reason); err != nil {
		kept = err.Error()
	}
	now := time.Now().UnixNano()
	last := e.lastDeadLog.Load()
	if now-last > int64(10*time.Second) && e.lastDeadLog.CompareAndSwap(last, now) {
		e.log.Error("usage events too large for the bus set aside", "batch", m.BatchID, "events", n, "bytes", len(m.Data),
			"reason", reason, "kept", kept, "deadlettered_total", total)
	}
}

func (e *Emitter) writeDeadLetter(m bus.Message, n int, reason string) error {
	if e.deadBytes.Add(int64(len(m.Data))) > maxDeadLetterBytes {
		e.deadBytes.Add(-int64(len(m.Data)))
		return fmt.Errorf("not kept: this run's dead letters reached %d bytes", maxDeadLetterBytes)
	}
	dir := filepath.Join(e.cfg.DataDir, "deadletter")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("not kept: %w", err)
	}
	if err := writeFile(filepath.Join(dir, safeName(m.BatchID)+".batch"), m.Data, e.cfg.DurableLog); err != nil {
		return fmt.Errorf("not kept: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "reasons.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("kept without its reason: %w", err)
	}
	line := fmt.Sprintf("%s batch=%s events=%d bytes=%d resent=%t reason=%q\n",
		time.Now().UTC().Format(time.RFC3339Nano), m.BatchID, n, len(m.Data), m.Resent, reason)
	_, err = f.WriteString(line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("kept without its reason: %w", err)
	}
	return nil
}

// safeName is id with every byte outside [A-Za-z0-9._-] replaced by '_'.
func safeName(id string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		}
		return '_'
	}, id)
}

// replayLog reports the replayer's progress and failures at most once per
// replayLogInterval while the spool is not empty (the first one at once),
// so that a replay that keeps failing stays visible in the log.
type replayLog struct {
	e     *Emitter
	fails int
	last  time.Time
}

func (r *replayLog) note(err error) {
	if err != nil {
		r.fails++
	}
	now := time.Now()
	if now.Sub(r.last) < replayLogInterval {
		return
	}
	r.last = now
	b, n, _ := r.e.spool.stats()
	if err != nil {
		r.e.log.Warn("event spool replay failed; retrying", "err", err, "failed_attempts", r.fails, "spool_batches", b, "spool_events", n)
		return
	}
	r.e.log.Info("replaying event spool", "spool_batches", b, "spool_events", n, "failed_attempts", r.fails)
}
