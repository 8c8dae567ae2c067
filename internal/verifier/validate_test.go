package verifier

import (
	"strings"
	"testing"
)

// TestRunConfigValidateReportsEveryProblemAndChangesNothing: a config with
// three problems gets all three in one error, and Validate leaves the
// defaults (verifier id, logger) to Run.
func TestRunConfigValidateReportsEveryProblemAndChangesNothing(t *testing.T) {
	cfg := RunConfig{Listen: "127.0.0.1:0", Upstream: "ftp://x", HTTP: HTTPConfig{ForwardedHeader: "X-Bogus"}}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"a bus is required", "--forwarded-header", "--upstream", "--data-dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if cfg.VerifierID != "" || cfg.Logger != nil {
		t.Errorf("Validate changed the config: id %q, logger %v", cfg.VerifierID, cfg.Logger)
	}
	if d := cfg.withDefaults(); d.VerifierID == "" || d.Logger == nil {
		t.Errorf("withDefaults: id %q, logger %v", d.VerifierID, d.Logger)
	}
}
