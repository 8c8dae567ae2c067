// Package backtest runs `keymeter rules backtest` and `rules diff`: the
// event sources (an NDJSON history decoded in parallel, or stored history),
// the bad-line report, the decision and label plumbing and the report.
package backtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// StoreSource feeds a backtest with stored events, oldest first. The store
// is read on a goroutine of its own, a time slice at a time (the store reads
// the next slice while this one is replayed), so reading overlaps the rules.
type StoreSource struct {
	ch     chan []event.Event
	errc   chan error
	cancel context.CancelFunc
	cur    []event.Event
	pos    int
}

func NewStoreSource(ctx context.Context, st *store.DB, from, to time.Time) *StoreSource {
	ctx, cancel := context.WithCancel(ctx)
	// Unbuffered: the store already reads a slice ahead, so at most three
	// slices (up to 500k events each) are in memory at once.
	s := &StoreSource{ch: make(chan []event.Event), errc: make(chan error, 1), cancel: cancel}
	go func() {
		defer close(s.ch)
		s.errc <- st.ScanEventBatches(ctx, from, to, ScanSliceRows, func(b []event.Event) error {
			select {
			case s.ch <- b:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	return s
}

// Next implements detect.EventSource.
func (s *StoreSource) Next() (event.Event, error) {
	for s.pos >= len(s.cur) {
		b, ok := <-s.ch
		if !ok {
			if err := <-s.errc; err != nil {
				s.errc <- err
				return event.Event{}, err
			}
			s.errc <- nil
			return event.Event{}, io.EOF
		}
		s.cur, s.pos = b, 0
	}
	s.pos++
	return s.cur[s.pos-1], nil
}

// Stop ends the store read.
func (s *StoreSource) Stop() { s.cancel() }

// BadLines counts the lines of an NDJSON history that are not events, by
// field, with the first few as examples (line number, field, reason).
type BadLines struct {
	N        int64            // bad lines
	ByField  map[string]int64 // bad lines by field
	examples []string
}

func (b *BadLines) add(fe *event.FieldError) {
	if b.ByField == nil {
		b.ByField = map[string]int64{}
	}
	b.N++
	b.ByField[fe.Field]++
	if len(b.examples) < 10 {
		b.examples = append(b.examples, fe.Error())
	}
}

// Report writes the count, the examples and the count by field.
func (b *BadLines) Report(w io.Writer, name string) {
	if b.N == 0 {
		return
	}
	fmt.Fprintf(w, "%s: %d bad lines", name, b.N)
	fields := make([]string, 0, len(b.ByField))
	for f := range b.ByField {
		fields = append(fields, f)
	}
	sort.Strings(fields)
	for _, f := range fields {
		fmt.Fprintf(w, " %s=%d", f, b.ByField[f])
	}
	fmt.Fprintln(w)
	for _, e := range b.examples {
		fmt.Fprintf(w, "  %s:%s\n", name, strings.TrimPrefix(e, "line "))
	}
	if b.N > int64(len(b.examples)) {
		fmt.Fprintf(w, "  ... and %d more\n", b.N-int64(len(b.examples)))
	}
}

// NDJSONSource reads an NDJSON history with decoding spread over several
// goroutines: a reader cuts the input into chunks of whole lines, workers
// decode chunks (each with its own interned strings), and Next hands the
// events out in file order. Bad lines are counted (and skipped when told),
// and every event is shown to onEvent (the label scorer, safe for
// concurrent use) as it is decoded.
type NDJSONSource struct {
	order chan chan chunkResult // results in file order
	stop  chan struct{}
	cur   chunkResult
	pos   int
	bad   BadLines
	err   error
	done  bool
}

type chunkJob struct {
	data  []byte
	line  int // number of the chunk's first line
	out   chan chunkResult
	final error // set on the last job: the reader's error (nil at EOF)
}

type chunkResult struct {
	events []event.Event
	bad    []*event.FieldError
	stopAt *event.FieldError // first bad line, when not skipping: events end before it
	err    error             // read error after these events
	last   bool
}

const (
	chunkSize   = 1 << 20
	maxLineSize = 4 << 20
)

var chunkPool = sync.Pool{New: func() any { b := make([]byte, 0, chunkSize); return &b }}

func NewNDJSONSource(r io.Reader, skipInvalid bool, onEvent func(*event.Event)) *NDJSONSource {
	workers := max(1, min(runtime.GOMAXPROCS(0), 4))
	s := &NDJSONSource{order: make(chan chan chunkResult, 4*workers), stop: make(chan struct{})}
	jobs := make(chan chunkJob, workers)
	for range workers {
		go func() {
			dec := event.NewLineDecoder()
			for j := range jobs {
				j.out <- decodeChunk(dec, j, skipInvalid, onEvent)
			}
		}()
	}
	go func() {
		defer close(s.order)
		defer close(jobs)
		var carry []byte
		line := 1
		send := func(j chunkJob) bool {
			j.out = make(chan chunkResult, 1)
			select {
			case s.order <- j.out:
			case <-s.stop:
				return false
			}
			select {
			case jobs <- j:
				return true
			case <-s.stop:
				return false
			}
		}
		for {
			bp := chunkPool.Get().(*[]byte)
			buf := append((*bp)[:0], carry...)
			if cap(buf) < len(carry)+chunkSize/2 {
				buf = append(make([]byte, 0, 2*len(carry)+chunkSize), carry...)
			}
			n, err := io.ReadAtLeast(r, buf[len(buf):cap(buf)], 1)
			buf = buf[:len(buf)+n]
			if err == io.ErrUnexpectedEOF {
				err = nil
			}
			if err != nil {
				// The end (or a read error): the rest is the last chunk.
				if err == io.EOF {
					err = nil
				}
				send(chunkJob{data: buf, line: line, final: err})
				return
			}
			nl := bytes.LastIndexByte(buf, '\n')
			if nl < 0 {
				if len(buf) > maxLineSize {
					send(chunkJob{data: nil, line: line, final: fmt.Errorf("line %d: longer than %d bytes", line, maxLineSize)})
					return
				}
				carry = buf // a long line: read more of it
				continue
			}
			carry = append(carry[:0:0], buf[nl+1:]...)
			chunk := buf[:nl+1]
			next := line + bytes.Count(chunk, []byte{'\n'})
			if !send(chunkJob{data: chunk, line: line}) {
				return
			}
			line = next
		}
	}()
	return s
}

// decodeChunk decodes the lines of one chunk in order.
func decodeChunk(dec *event.LineDecoder, j chunkJob, skipInvalid bool, onEvent func(*event.Event)) chunkResult {
	res := chunkResult{events: make([]event.Event, 0, len(j.data)/300+1), err: j.final, last: j.final != nil || j.data == nil}
	data, line := j.data, j.line
	for len(data) > 0 {
		var l []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			l, data = data[:i], data[i+1:]
		} else {
			l, data = data, nil
		}
		n := line
		line++
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		e, err := dec.Decode(l)
		if err != nil {
			fe, ok := err.(*event.FieldError)
			if !ok {
				fe = &event.FieldError{Field: "(document)", Reason: err.Error()}
			}
			fe.Line = n
			res.bad = append(res.bad, fe)
			if !skipInvalid {
				res.stopAt = fe
				break
			}
			continue
		}
		if onEvent != nil {
			onEvent(&e)
		}
		res.events = append(res.events, e)
	}
	if j.data != nil && cap(j.data) >= chunkSize {
		b := j.data[:0]
		chunkPool.Put(&b)
	}
	return res
}

// Next implements detect.EventSource.
func (s *NDJSONSource) Next() (event.Event, error) {
	for s.pos >= len(s.cur.events) {
		if s.err != nil {
			return event.Event{}, s.err
		}
		if s.done {
			return event.Event{}, io.EOF
		}
		// The end of the chunk handed out: its bad line or read error, if any.
		if s.cur.stopAt != nil {
			s.err = s.cur.stopAt
			continue
		}
		if s.cur.err != nil {
			s.err = s.cur.err
			continue
		}
		if s.cur.last {
			s.done = true
			continue
		}
		ch, ok := <-s.order
		if !ok {
			s.done = true
			continue
		}
		s.cur, s.pos = <-ch, 0
		for _, fe := range s.cur.bad {
			s.bad.add(fe)
		}
	}
	e := s.cur.events[s.pos]
	s.pos++
	return e, nil
}

// Close stops the reader early; the bad-line counts are final only after
// Next returned io.EOF or an error.
func (s *NDJSONSource) Close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
}

// TuneGC lets a replay's heap grow 4x between collections instead of 2x
// (decoding allocates an id per event; the engine's state is long-lived),
// with a soft limit of 2 GiB so large engines collect as usual. GOGC and
// GOMEMLIMIT in the environment win.
func TuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(2 << 30)
	}
}

// ScanSliceRows is how many stored events one store read aims at (0: the
// store's default, store.DefaultSliceRows); tests make it small.
var ScanSliceRows = 0

// Bad is the count of bad lines so far (final once Next returned io.EOF or
// an error).
func (s *NDJSONSource) Bad() *BadLines { return &s.bad }
