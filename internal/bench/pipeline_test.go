package bench

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// The pipeline's load generator encodes the bytes event.AppendBatch makes
// of the same batch (up to the batch's created time, taken when encoding).
func TestSyntheticEncoderMatchesAppendBatch(t *testing.T) {
	now := time.Now().UTC()
	enc := newSyntheticEncoder(1000)
	var buf []byte
	for _, c := range []struct{ bi, from, to int }{{0, 0, 3}, {7, 7000, 8000}, {1234, 1_233_999, 1_234_001}, {999_999, 999_999_000, 999_999_001}} {
		buf = enc.appendBatch(buf[:0], c.bi, c.from, c.to, now)
		var got event.Batch
		if err := event.DecodeBatch(buf, &got); err != nil {
			t.Fatal(err)
		}
		want := event.Batch{ID: fmt.Sprintf("bench-%d", c.bi), Producer: "bench", Created: got.Created}
		for i := c.from; i < c.to; i++ {
			e := syntheticEvent
			e.ID, e.KeyID, e.Time = fmt.Sprintf("e%d", i), fmt.Sprintf("key_bench_%05d", c.bi%1000), now.Add(time.Duration(i)*time.Microsecond)
			want.Events = append(want.Events, e)
		}
		if w := event.AppendBatch(nil, &want); !bytes.Equal(buf, w) {
			t.Fatalf("batch %d: encoded\n%x\nwant (event.AppendBatch)\n%x", c.bi, buf, w)
		}
		if enc.batchID != want.ID || enc.key(c.bi) != want.Events[0].KeyID {
			t.Fatalf("batch id %q key %q, want %q %q", enc.batchID, enc.key(c.bi), want.ID, want.Events[0].KeyID)
		}
	}
}
