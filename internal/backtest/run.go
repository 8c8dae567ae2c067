package backtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/evaluate"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/store"
)

// Config is one `rules backtest`.
type Config struct {
	Rules  *detect.RuleSet
	Detect detect.Config // the engine's settings; Sink is set by Run

	// EventsPath is the NDJSON history ("-": stdin); empty: the stored
	// events of [From, To), read from the store OpenStore opens.
	EventsPath string
	From, To   time.Time
	OpenStore  func(context.Context) (*store.DB, error)

	DecisionsPath string        // write every decision here as NDJSON
	LabelsPath    string        // score the decisions against these labels
	Grace         time.Duration // --labels: grace after an attack's end
	SkipInvalid   bool          // go on past bad lines
	JSON          bool          // the report as JSON

	Out   io.Writer // the report
	Log   io.Writer // progress and timings
	Stdin io.Reader // for EventsPath "-"
}

// runner is the state of one Run.
type runner struct {
	cfg    Config
	scorer *evaluate.Scorer
	werr   error // writing decisions
}

// Run replays the history through the rules in event time and writes the
// report (text with a name=value summary line, or JSON). A bad line stops
// the replay unless SkipInvalid: the report so far is written, and the
// error names the line and field.
func Run(ctx context.Context, cfg Config) error {
	TuneGC()
	r := &runner{cfg: cfg}
	if cfg.Log == nil {
		r.cfg.Log = os.Stderr
	}
	if cfg.Stdin == nil {
		r.cfg.Stdin = os.Stdin
	}
	if cfg.LabelsPath != "" {
		labels, err := evaluate.ReadLabelFile(cfg.LabelsPath)
		if err != nil {
			return fmt.Errorf("--labels: %w", err)
		}
		if r.scorer, err = evaluate.NewScorer(labels, cfg.Grace); err != nil {
			return fmt.Errorf("--labels %s: %w", cfg.LabelsPath, err)
		}
	}
	if cfg.DecisionsPath != "" {
		f, err := os.Create(cfg.DecisionsPath)
		if err != nil {
			return err
		}
		defer f.Close()
		bw := bufio.NewWriter(f)
		defer bw.Flush()
		r.cfg.Detect.Sink = detect.SinkFunc(func(d *keymeterv1.Decision) {
			if r.werr != nil {
				return
			}
			js, err := protojson.Marshal(d)
			if err == nil {
				_, err = fmt.Fprintf(bw, "%s\n", js)
			}
			r.werr = err
		})
	}
	if r.scorer != nil {
		next := r.cfg.Detect.Sink
		r.cfg.Detect.Sink = detect.SinkFunc(func(d *keymeterv1.Decision) {
			r.scorer.Decide(d)
			if next != nil {
				next.Decide(d)
			}
		})
	}
	if cfg.EventsPath == "" {
		return r.runStore(ctx)
	}
	return r.runNDJSON()
}

// runStore replays stored history.
func (r *runner) runStore(ctx context.Context) error {
	cfg := &r.cfg
	if cfg.From.IsZero() || cfg.To.IsZero() {
		return errors.New("give --events FILE.ndjson (or - for stdin), or --from and --to to replay stored history")
	}
	st, err := cfg.OpenStore(ctx)
	if err != nil {
		return err
	}
	defer st.Close(context.Background())
	src := NewStoreSource(ctx, st, cfg.From, cfg.To)
	defer src.Stop()
	var es detect.EventSource = src
	if r.scorer != nil {
		es = scoredSource{src, r.scorer}
	}
	prog := newProgressBar("backtest", 0)
	start := time.Now()
	rep, err := detect.Backtest(cfg.Rules, es, detect.BacktestOptions{From: cfg.From, To: cfg.To, Config: cfg.Detect,
		Progress: func(n int64, at time.Time) { prog.update(0, n, at) }})
	if err != nil {
		return fmt.Errorf("stored history: %w", err)
	}
	prog.done(0, rep.Events, time.Time{})
	if r.werr != nil {
		return fmt.Errorf("writing decisions: %w", r.werr)
	}
	elapsed := time.Since(start)
	fmt.Fprintf(cfg.Log, "backtest: %d stored events in %s\n", rep.Events, elapsed.Round(time.Millisecond))
	return r.finish(rep, elapsed, nil, "")
}

// runNDJSON replays an NDJSON file (or stdin).
func (r *runner) runNDJSON() error {
	cfg := &r.cfg
	in := cfg.Stdin
	var size int64
	name := "stdin"
	if cfg.EventsPath != "-" {
		f, err := os.Open(cfg.EventsPath)
		if err != nil {
			return err
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil {
			size = st.Size()
		}
		in, name = f, cfg.EventsPath
	}
	cr := &countingReader{r: in}
	var onEvent func(*event.Event)
	if r.scorer != nil {
		onEvent = r.scorer.Event
	}
	src := NewNDJSONSource(cr, cfg.SkipInvalid, onEvent)
	defer src.Close()
	prog := newProgressBar("backtest", size)
	start := time.Now()
	rep, err := detect.Backtest(cfg.Rules, src, detect.BacktestOptions{From: cfg.From, To: cfg.To, Config: cfg.Detect,
		Progress: func(n int64, at time.Time) { prog.update(cr.Load(), n, at) }})
	if rep == nil {
		return err
	}
	prog.done(cr.Load(), rep.Events, time.Time{})
	elapsed := time.Since(start)
	if err != nil {
		var fe *event.FieldError
		if !errors.As(err, &fe) {
			return fmt.Errorf("%s: %w", name, err)
		}
		// A bad line: the report of what was replayed, then the line.
		fmt.Fprintf(cfg.Log, "backtest: stopped at the first bad line after %d events (--skip-invalid goes on past bad lines)\n", rep.Events)
		if ferr := r.finish(rep, elapsed, src.Bad(), name); ferr != nil {
			return ferr
		}
		return fmt.Errorf("%s:%d: field %s: %s", name, fe.Line, fe.Field, fe.Reason)
	}
	if r.werr != nil {
		return fmt.Errorf("writing decisions: %w", r.werr)
	}
	fmt.Fprintf(cfg.Log, "backtest: %d events in %s\n", rep.Events, elapsed.Round(time.Millisecond))
	return r.finish(rep, elapsed, src.Bad(), name)
}

// finish writes the report: JSON, or text with the bad lines, the label
// score and the summary line.
func (r *runner) finish(rep *detect.BacktestReport, elapsed time.Duration, bad *BadLines, name string) error {
	out := r.cfg.Out
	if r.cfg.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if r.scorer == nil && (bad == nil || bad.N == 0) {
			return enc.Encode(rep) // the report as before
		}
		v := map[string]any{"backtest": rep}
		if r.scorer != nil {
			v["labels"] = r.scorer.Result()
		}
		if bad != nil {
			v["bad_lines"], v["bad_lines_by_field"] = bad.N, bad.ByField
		}
		return enc.Encode(v)
	}
	if err := rep.WriteText(out); err != nil {
		return err
	}
	if bad != nil {
		bad.Report(out, name)
	}
	sum := fmt.Sprintf("backtest events=%d events_per_s=%.0f", rep.Events, float64(rep.Events)/max(elapsed.Seconds(), 1e-9))
	if bad != nil {
		sum += fmt.Sprintf(" bad_lines=%d", bad.N)
	}
	if r.scorer != nil {
		res := r.scorer.Result()
		fmt.Fprintln(out)
		if err := res.WriteText(out); err != nil {
			return err
		}
		sum += " " + res.Summary()
	}
	_, err := fmt.Fprintln(out, sum)
	return err
}
