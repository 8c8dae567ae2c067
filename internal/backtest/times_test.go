package backtest

import (
	"strings"
	"testing"
)

func TestParseRangeNamesTheFlag(t *testing.T) {
	f, to, err := ParseRange("2026-03-01T00:00:00Z", "")
	if err != nil || f.Day() != 1 || !to.IsZero() {
		t.Fatalf("from only: %v %v %v", f, to, err)
	}
	if _, _, err := ParseRange("", "tomorrow"); err == nil || !strings.Contains(err.Error(), "--to") {
		t.Fatalf("bad --to: %v", err)
	}
	if _, _, err := ParseRange("x", ""); err == nil || !strings.Contains(err.Error(), "--from") {
		t.Fatalf("bad --from: %v", err)
	}
}
