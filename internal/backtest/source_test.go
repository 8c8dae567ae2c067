package backtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// The chunked, multi-goroutine NDJSON source gives the events in file order
// with the right line numbers, across chunk boundaries, long lines, blank
// lines and a last line without a newline.
func TestNDJSONSourceOrderAndLines(t *testing.T) {
	var b bytes.Buffer
	t0 := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	n := 30000
	badAt := map[int]bool{7: true, 12345: true, 29999: true} // line numbers
	line := 0
	var want []string
	for i := range n {
		line++
		if i%5000 == 0 {
			b.WriteString("\n") // a blank line
			line++
		}
		if badAt[line] {
			b.WriteString(`{"id":"bad","time":"2026-11-24T00:00:00Z","outcome":"valid","status":"x"}` + "\n")
			line++
		}
		e := event.Event{ID: fmt.Sprintf("e%d", i), Time: t0.Add(time.Duration(i) * time.Millisecond), Outcome: event.OutcomeValid, ClientIP: "198.51.100.1"}
		if i == 20000 {
			e.UserAgent = strings.Repeat("x", 3<<20) // a line longer than a chunk
		}
		want = append(want, e.ID)
		b.Write(e.AppendJSON(nil))
		if i < n-1 {
			b.WriteByte('\n')
		}
	}
	data := b.Bytes()
	// Skipping: every event, in order, and the bad lines by number.
	var seen atomic.Int64
	src := NewNDJSONSource(bytes.NewReader(data), true, func(*event.Event) { seen.Add(1) })
	var got []string
	for {
		e, err := src.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e.ID)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") || seen.Load() != int64(n) {
		t.Fatalf("got %d events (%d seen), want %d in order", len(got), seen.Load(), n)
	}
	var rep strings.Builder
	src.Bad().Report(&rep, "f")
	if src.Bad().N != 3 || !strings.Contains(rep.String(), "f:7: field status") || !strings.Contains(rep.String(), "f:12345: field status") ||
		!strings.Contains(rep.String(), "f:29999: field status") {
		t.Fatalf("bad lines: %d\n%s", src.Bad().N, rep.String())
	}
	// Not skipping: the events before the first bad line, then its error.
	src = NewNDJSONSource(bytes.NewReader(data), false, nil)
	k := 0
	var err error
	for {
		if _, err = src.Next(); err != nil {
			break
		}
		k++
	}
	var fe *event.FieldError
	if !errors.As(err, &fe) || fe.Line != 7 || k != 5 {
		t.Fatalf("stopped after %d events with %v, want 5 events then line 7", k, err)
	}
	src.Close()
}
