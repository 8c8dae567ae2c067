package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

// storeSource feeds a backtest with stored events, oldest first. The store
// is read on a goroutine of its own and events cross in batches, so reading
// overlaps the rules.
type storeSource struct {
	ch     chan []event.Event
	errc   chan error
	cancel context.CancelFunc
	cur    []event.Event
	pos    int
}

func newStoreSource(ctx context.Context, st *store.DB, from, to time.Time) *storeSource {
	ctx, cancel := context.WithCancel(ctx)
	s := &storeSource{ch: make(chan []event.Event, 8), errc: make(chan error, 1), cancel: cancel}
	go func() {
		defer close(s.ch)
		batch := make([]event.Event, 0, 1024)
		err := st.ScanEvents(ctx, from, to, scanPage, func(e event.Event) error {
			batch = append(batch, e)
			if len(batch) < cap(batch) {
				return nil
			}
			select {
			case s.ch <- batch:
				batch = make([]event.Event, 0, 1024)
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		if err == nil && len(batch) > 0 {
			select {
			case s.ch <- batch:
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		s.errc <- err
	}()
	return s
}

// Next implements detect.EventSource.
func (s *storeSource) Next() (event.Event, error) {
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

func (s *storeSource) stop() { s.cancel() }

// badLines counts the lines of an NDJSON history that are not events, by
// field, with the first few as examples (line number, field, reason).
type badLines struct {
	n        int64
	byField  map[string]int64
	examples []string
}

func (b *badLines) add(fe *event.FieldError) {
	if b.byField == nil {
		b.byField = map[string]int64{}
	}
	b.n++
	b.byField[fe.Field]++
	if len(b.examples) < 10 {
		b.examples = append(b.examples, fe.Error())
	}
}

// report writes the count, the examples and the count by field.
func (b *badLines) report(w io.Writer, name string) {
	if b.n == 0 {
		return
	}
	fmt.Fprintf(w, "%s: %d bad lines", name, b.n)
	fields := make([]string, 0, len(b.byField))
	for f := range b.byField {
		fields = append(fields, f)
	}
	sort.Strings(fields)
	for _, f := range fields {
		fmt.Fprintf(w, " %s=%d", f, b.byField[f])
	}
	fmt.Fprintln(w)
	for _, e := range b.examples {
		fmt.Fprintf(w, "  %s:%s\n", name, strings.TrimPrefix(e, "line "))
	}
	if b.n > int64(len(b.examples)) {
		fmt.Fprintf(w, "  ... and %d more\n", b.n-int64(len(b.examples)))
	}
}

// ndjsonSource reads events on a goroutine of its own (decoding overlaps
// the rules on another core), counts bad lines and skips them when told,
// and shows every event to onEvent (the label scorer) before the engine.
type ndjsonSource struct {
	ch   chan []event.Event
	errc chan error
	stop chan struct{}
	cur  []event.Event
	pos  int
	free chan []event.Event
	bad  badLines
	err  error
}

func newNDJSONSource(rd *event.NDJSONReader, skipInvalid bool, onEvent func(*event.Event)) *ndjsonSource {
	s := &ndjsonSource{ch: make(chan []event.Event, 8), errc: make(chan error, 1), stop: make(chan struct{}), free: make(chan []event.Event, 10)}
	go func() {
		defer close(s.ch)
		batch := make([]event.Event, 0, 1024)
		send := func() bool {
			select {
			case s.ch <- batch:
			case <-s.stop:
				return false
			}
			select {
			case batch = <-s.free:
				batch = batch[:0]
			default:
				batch = make([]event.Event, 0, 1024)
			}
			return true
		}
		for {
			e, err := rd.Next()
			if err != nil {
				var fe *event.FieldError
				if errors.As(err, &fe) {
					s.bad.add(fe)
					if skipInvalid {
						continue
					}
				}
				if len(batch) > 0 && !send() {
					return
				}
				if err != io.EOF {
					s.errc <- err
				}
				return
			}
			if onEvent != nil {
				onEvent(&e)
			}
			batch = append(batch, e)
			if len(batch) == cap(batch) && !send() {
				return
			}
		}
	}()
	return s
}

// Next implements detect.EventSource.
func (s *ndjsonSource) Next() (event.Event, error) {
	for s.pos >= len(s.cur) {
		if s.cur != nil {
			select {
			case s.free <- s.cur:
			default:
			}
		}
		b, ok := <-s.ch
		if !ok {
			s.cur = nil
			select {
			case err := <-s.errc:
				s.err = err
				return event.Event{}, err
			default:
			}
			if s.err != nil {
				return event.Event{}, s.err
			}
			return event.Event{}, io.EOF
		}
		s.cur, s.pos = b, 0
	}
	e := s.cur[s.pos]
	s.pos++
	return e, nil
}

// close stops the reading goroutine early; the bad-line counts are final
// only after Next returned io.EOF or an error.
func (s *ndjsonSource) close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
}

// tuneGC lets a replay's heap grow 4x between collections instead of 2x
// (decoding allocates an id per event; the engine's state is long-lived),
// with a soft limit of 2 GiB so large engines collect as usual. GOGC and
// GOMEMLIMIT in the environment win.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(2 << 30)
	}
}

// scanPage is how many stored events one store query returns (fewer,
// larger queries: 200k rows read ~15% faster than 50k from chDB).
var scanPage = 200_000
