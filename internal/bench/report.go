package bench

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Summary is the one line of figures a benchmark prints, in the order
// they were added.
type Summary []string

// Add appends name=value; a float64 is printed with one decimal.
func (s *Summary) Add(name string, v any) {
	switch x := v.(type) {
	case float64:
		*s = append(*s, fmt.Sprintf("%s=%.1f", name, x))
	default:
		*s = append(*s, fmt.Sprintf("%s=%v", name, x))
	}
}

func (s Summary) String() string { return strings.Join(s, " ") }

// Print writes the line to w.
func (s Summary) Print(w io.Writer) { fmt.Fprintln(w, s.String()) }

// PercentileMS sorts d in place and returns its p-quantile (0..1) in
// milliseconds; 0 for no samples.
func PercentileMS(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(float64(len(d)-1) * p)
	return float64(d[i].Microseconds()) / 1000
}

// Progress prints a line to W at most once per Every.
type Progress struct {
	Name  string
	Every time.Duration
	W     io.Writer // default os.Stderr

	last time.Time
}

// Tick prints "Name: …" unless a line was printed less than Every ago.
func (p *Progress) Tick(format string, args ...any) {
	if time.Since(p.last) < p.Every {
		return
	}
	p.last = time.Now()
	w := p.W
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, "%s: "+format+"\n", append([]any{p.Name}, args...)...)
}

// Output is where a benchmark writes: the summary line to Out (default
// os.Stdout), progress to Progress (default os.Stderr).
type Output struct {
	Out      io.Writer
	Progress io.Writer
}

func (o Output) out() io.Writer {
	if o.Out == nil {
		return lockedWriter{os.Stdout}
	}
	return lockedWriter{o.Out}
}

func (o Output) progress() io.Writer {
	if o.Progress == nil {
		return lockedWriter{os.Stderr}
	}
	return lockedWriter{o.Progress}
}

// writeMu serializes every write a benchmark makes: a run's goroutines
// (publisher, consumer, progress) print to the same writers, which need
// not be safe for concurrent use (a bytes.Buffer in tests is not).
var writeMu sync.Mutex

type lockedWriter struct{ w io.Writer }

func (l lockedWriter) Write(p []byte) (int, error) {
	writeMu.Lock()
	defer writeMu.Unlock()
	return l.w.Write(p)
}

func (o Output) logf(format string, args ...any) { fmt.Fprintf(o.progress(), format+"\n", args...) }
