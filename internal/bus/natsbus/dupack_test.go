package natsbus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymeter/keymeter/internal/bus"
)

// TestDuplicateWithoutSequenceIsNoAck: a publish answered "duplicate" with
// stream sequence 0 was not stored, and must fail. nats-server 2.9.10 gives
// that answer to a retry of a batch whose first proposal its leader
// dropped; the old publisher took it as an acknowledgement, the verifier
// deleted the batch from its spool, and its events were lost (the chaos
// test's 8 missing events). The events stream is removed and a plain
// subscriber answers in its place, as that server would; a duplicate with
// a sequence stays an acknowledgement.
func TestDuplicateWithoutSequenceIsNoAck(t *testing.T) {
	srv := testServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := New(ctx, Config{Partitions: 1}, WithEmbedded(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close(ctx) }()
	if err := b.js.DeleteStream(ctx, b.streams.events); err != nil {
		t.Fatal(err)
	}
	answers := map[string]string{
		"staged": `{"stream":"KEYMETER_EVENTS","seq":0,"duplicate":true}`,
		"stored": `{"stream":"KEYMETER_EVENTS","seq":7,"duplicate":true}`,
	}
	msgIDs := make(chan string, 4)
	sub, err := b.nc.Subscribe(b.partitionSubject(0), func(m *nats.Msg) {
		msgIDs <- m.Header.Get(nats.MsgIdHdr)
		_ = m.Respond([]byte(answers[m.Header.Get(bus.HeaderBatchID)]))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// The retry of the staged batch goes under a new message id, which the
	// server has not staged (the old one it would refuse for its whole
	// duplicate window).
	for i, c := range []struct {
		id, msgID string
		want      error
	}{{"staged", "staged", ErrDuplicateNotStored}, {"stored", "stored", nil}, {"staged", "staged~1", ErrDuplicateNotStored}} {
		id, want := c.id, c.want
		ack, err := b.Publisher().Publish(ctx, bus.Message{Key: "k", BatchID: id, Source: "t", Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-ack.Done():
		case <-ctx.Done():
			t.Fatalf("%s: no answer", id)
		}
		if err := ack.Err(); !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Fatalf("%s: ack error %v, want %v", id, err, want)
		}
		if got := <-msgIDs; got != c.msgID {
			t.Fatalf("publish %d of %s: message id %q, want %q", i, id, got, c.msgID)
		}
	}
}

// TestDeliverySeqGap: a jump forward of the delivery sequence is a loss
// (deliveries the client dropped, or another process pulled), a step back
// (a new consumer leader) is not; the consumer is created by the bind, so
// a first delivery other than 1 is a loss too. The pump gives up the partition on a loss: acking a newer delivery
// under AckAll would acknowledge the dropped ones unprocessed, which lost
// events in the chaos test while every one of them was in the stream.
func TestDeliverySeqGap(t *testing.T) {
	var s deliverySeq
	for i, c := range []struct {
		n        uint64
		from, to uint64
		gap      bool
	}{{1, 0, 0, false}, {2, 0, 0, false}, {2, 0, 0, false}, {1, 0, 0, false}, {2, 0, 0, false}, {5, 3, 4, true}, {6, 0, 0, false}} {
		from, to, gap := s.next(c.n)
		if from != c.from || to != c.to || gap != c.gap {
			t.Fatalf("step %d (%d): %d-%d %v, want %d-%d %v", i, c.n, from, to, gap, c.from, c.to, c.gap)
		}
	}
	var fresh deliverySeq
	if from, to, gap := fresh.next(3); !gap || from != 1 || to != 2 {
		t.Fatalf("first delivery 3: %d-%d %v, want 1-2 missed", from, to, gap)
	}
}
