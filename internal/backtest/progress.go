package backtest

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/evaluate"
	"github.com/keymeter/keymeter/internal/event"
)

// countingReader counts the bytes read (read on the decoding goroutine,
// shown by the progress bar on another).
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Load() int64 { return c.n.Load() }

// scoredSource shows every event of src to the label scorer.
type scoredSource struct {
	src    detect.EventSource
	scorer *evaluate.Scorer
}

func (s scoredSource) Next() (event.Event, error) {
	e, err := s.src.Next()
	if err == nil {
		s.scorer.Event(&e)
	}
	return e, err
}

// progressBar draws a bar on a terminal and plain lines elsewhere, on
// stderr, at most every 200 ms (terminal) or 2 s.
type progressBar struct {
	name  string
	total int64
	tty   bool
	start time.Time
	last  time.Time
}

func newProgressBar(name string, total int64) *progressBar {
	tty := false
	if st, err := os.Stderr.Stat(); err == nil {
		tty = st.Mode()&os.ModeCharDevice != 0
	}
	return &progressBar{name: name, total: total, tty: tty, start: time.Now(), last: time.Now()}
}

func (p *progressBar) update(bytes, events int64, at time.Time) {
	every := 2 * time.Second
	if p.tty {
		every = 200 * time.Millisecond
	}
	if time.Since(p.last) < every {
		return
	}
	p.last = time.Now()
	p.draw(bytes, events, at, false)
}

func (p *progressBar) done(bytes, events int64, at time.Time) { p.draw(bytes, events, at, true) }

func (p *progressBar) draw(bytes, events int64, at time.Time, final bool) {
	rate := float64(events) / max(time.Since(p.start).Seconds(), 1e-9)
	stamp := ""
	if !at.IsZero() {
		stamp = " at " + at.UTC().Format(time.RFC3339)
	}
	if !p.tty {
		if !final {
			fmt.Fprintf(os.Stderr, "%s: %d events (%.0f/s)%s\n", p.name, events, rate, stamp)
		}
		return
	}
	bar := ""
	if p.total > 0 {
		const width = 30
		frac := min(float64(bytes)/float64(p.total), 1)
		fill := int(frac * width)
		bar = fmt.Sprintf("[%s%s] %3.0f%% ", strings.Repeat("=", fill), strings.Repeat(" ", width-fill), frac*100)
	}
	fmt.Fprintf(os.Stderr, "\r%s: %s%d events (%.0f/s)%s\033[K", p.name, bar, events, rate, stamp)
	if final {
		fmt.Fprintln(os.Stderr)
	}
}
