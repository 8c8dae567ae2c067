package loadgen

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/evaluate"
	"github.com/keymeter/keymeter/internal/event"
)

// ReadKeysFile reads a keys file: lines "key_id,project,secret" (blank
// lines and # comments skipped), as `keymeter dev` writes it.
func ReadKeysFile(path string) ([]Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []Key
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, ",")
		if len(parts) != 3 {
			return nil, fmt.Errorf("%s:%d: want key_id,project,secret", path, i+1)
		}
		out = append(out, Key{ID: parts[0], Project: parts[1], Secret: parts[2]})
	}
	return out, nil
}

// EvalFiles are where WriteEvalSet writes: the events, the labels and
// (optional) the keys with their kinds, all NDJSON.
type EvalFiles struct {
	Events, Labels, Keys string
}

// WriteEvalSet generates the labelled evaluation set into files, with the
// keys by kind and the labels as progress on log and a name=value summary
// line on out.
func WriteEvalSet(cfg EvalConfig, files EvalFiles, out, log io.Writer) error {
	began := time.Now()
	// The labels and keys are known before the events: written first, so
	// that a backtest can read the events from a pipe as they come.
	ev, err := NewEval(cfg)
	if err != nil {
		return err
	}
	if err := writeEvalLabels(&ev.EvalSet, files); err != nil {
		return err
	}
	if ev.Surge != "" {
		fmt.Fprintf(log, "loadgen: surge day: %s\n", ev.Surge)
	}
	set, err := writeEvalEvents(ev, files.Events, log)
	if err != nil {
		return err
	}
	kinds := map[string]int{}
	for _, k := range set.Keys {
		kinds[k.Persona]++
	}
	var pops []string
	for _, p := range slices.Sorted(maps.Keys(kinds)) {
		pops = append(pops, fmt.Sprintf("%s=%d", p, kinds[p]))
	}
	fmt.Fprintf(log, "loadgen: keys %s\n", strings.Join(pops, " "))

	for _, l := range set.Labels {
		fmt.Fprintf(log, "loadgen: %-26s %s..%s %-8s %s (%s)\n", l.ID, l.Start.Format("01-02T15:04:05"), l.End.Format("15:04:05"), l.IntendedAction, l.Group, l.Note)
	}
	fmt.Fprintf(out, "loadgen=eval seed=%d start=%s end=%s events=%d benign_events=%d keys=%d labels=%d seconds=%.1f\n",
		cfg.Seed, set.Start.Format(time.RFC3339), set.End.Format(time.RFC3339), set.Events, set.Benign, len(set.Keys), len(set.Labels), time.Since(began).Seconds())
	return nil
}

// writeEvalEvents generates the set, writing its events to path.
func writeEvalEvents(ev *Eval, out string, log io.Writer) (*EvalSet, error) {
	f, err := os.Create(out)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	var buf []byte
	var n int64
	err = ev.Run(func(e *event.Event) error {
		buf = append(e.AppendJSON(buf[:0]), '\n')
		n++
		if n%1_000_000 == 0 {
			fmt.Fprintf(log, "loadgen: %d events, at %s\n", n, e.Time.Format(time.RFC3339))
		}
		_, err := w.Write(buf)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return &ev.EvalSet, f.Close()
}

// writeEvalLabels writes the labels and the keys of set.
func writeEvalLabels(set *EvalSet, files EvalFiles) error {
	lf, err := os.Create(files.Labels)
	if err != nil {
		return err
	}
	if err := evaluate.WriteLabels(lf, set.Labels); err != nil {
		lf.Close()
		return err
	}
	if err := lf.Close(); err != nil {
		return err
	}
	if files.Keys != "" {
		kf, err := os.Create(files.Keys)
		if err != nil {
			return err
		}
		enc := json.NewEncoder(kf)
		for _, k := range set.Keys {
			if err := enc.Encode(k); err != nil {
				kf.Close()
				return err
			}
		}
		if err := kf.Close(); err != nil {
			return err
		}
	}
	return nil
}

// WriteNDJSONFile writes reqs as NDJSON usage events to path (see
// WriteNDJSON).
func WriteNDJSONFile(path string, reqs []Request, seed uint64, t0 time.Time) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if err := WriteNDJSON(w, reqs, seed, t0); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
