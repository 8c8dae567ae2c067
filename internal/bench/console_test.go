package bench

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRunConsole: the console bench builds a small history, signs in and
// times every page (each must answer 200), one summary line per page.
func TestRunConsole(t *testing.T) {
	var out bytes.Buffer
	pages, err := RunConsole(ctx(t), ConsoleConfig{DB: openStore(t, fmt.Sprintf("bench_console_%d", seq.Add(1))), Backend: "chdb",
		Rows: 20_000, Keys: 50, Span: time.Hour, Samples: 1, DataDir: t.TempDir(), Output: Output{Out: &out, Progress: &bytes.Buffer{}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) < 10 || strings.Count(out.String(), "bench=console") != len(pages) {
		t.Fatalf("%d pages:\n%s", len(pages), out.String())
	}
	for _, p := range pages {
		if p.Median <= 0 || p.Max < p.Median {
			t.Fatalf("page %s: median %v max %v", p.Path, p.Median, p.Max)
		}
	}
}
