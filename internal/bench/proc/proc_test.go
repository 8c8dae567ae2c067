package proc

import (
	"testing"
	"time"
)

func TestFigures(t *testing.T) {
	rss, peak := RSSMB(), PeakRSSMB()
	if rss <= 0 || peak < rss {
		t.Fatalf("rss %.1f MiB, peak %.1f MiB", rss, peak)
	}
	c0 := CPU()
	for x := 0; CPU()-c0 < 5*time.Millisecond; x++ {
	}
	if CPU() <= c0 {
		t.Fatal("CPU time did not grow")
	}
}
