package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/keymeter/keymeter/internal/detect"
)

// RunDetect pushes every event through, on one engine and on several, and
// reports the groups the rules hold.
func TestRunDetect(t *testing.T) {
	set, err := detect.LoadPaths(detect.CompileOptions{}, "../../rules")
	if err != nil {
		t.Fatal(err)
	}
	for _, workers := range []int{1, 3} {
		var out, prog bytes.Buffer
		err := RunDetect(context.Background(), DetectConfig{Rules: set, Detect: detect.Config{MaxRevocationsPerHour: -1},
			Events: 5000, Keys: 200, Workers: workers, Batch: 512, Output: Output{Out: &out, Progress: &prog}})
		if err != nil {
			t.Fatal(err)
		}
		s := out.String()
		if !strings.HasPrefix(s, "bench=detect events=5000 ") || strings.Contains(s, " groups=0 ") || !strings.Contains(s, " keys=200 ") {
			t.Fatalf("workers=%d: summary %q", workers, s)
		}
	}
	if err := RunDetect(context.Background(), DetectConfig{Rules: set, Events: 0, Keys: 1, Batch: 1}); err == nil {
		t.Fatal("no events: want an error")
	}
}
