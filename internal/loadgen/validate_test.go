package loadgen

import (
	"strings"
	"testing"
	"time"
)

// TestConfigValidateReportsEveryProblemAndChangesNothing: every problem in
// one error, and the caller's config keeps its zero fields.
func TestConfigValidateReportsEveryProblemAndChangesNothing(t *testing.T) {
	cfg := Config{Scenarios: []string{"normal", "no-such"}, Rate: -1, Duration: 48 * time.Hour}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{`scenario "no-such"`, "rate -1", "duration 48h", "need at least one key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	empty := Config{}
	_ = empty.Validate()
	if empty.Scenarios != nil || empty.Rate != 0 || empty.MaxRequests != 0 {
		t.Errorf("Validate changed the config: %+v", empty)
	}
}
