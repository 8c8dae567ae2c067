package verifier

import (
	"context"
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

// TestConfigValidateReportsEveryProblem: a Config with five problems gets
// all five in one error.
func TestConfigValidateReportsEveryProblem(t *testing.T) {
	cfg := Config{AnonIPv6Prefix: 8, QuotaPeriod: "week", Routes: []Route{
		{Prefix: "api"}, {Prefix: "/a", Anonymous: true}, {Prefix: "/A"},
	}}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"Table is required", "prefix /8", `quota period "week"`,
		`route "api": the prefix must start with /`, `route "/a": anonymous access`, `route "/A" configured twice`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

// TestEmitterConfigValidateReportsEveryProblemAndChangesNothing: an empty
// EmitterConfig gets its three problems in one error; a valid one is left
// as it is (NewEmitter fills in the defaults).
func TestEmitterConfigValidateReportsEveryProblemAndChangesNothing(t *testing.T) {
	err := (&EmitterConfig{}).Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"Publisher is required", "DataDir is required", "Producer (verifier id) is required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	b := startNATS(t).connect(context.Background())
	cfg := &EmitterConfig{Publisher: b.Publisher(), Producer: "v", DataDir: t.TempDir()}
	before := *cfg
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if *cfg != before {
		t.Errorf("Validate changed the config: %+v, was %+v", *cfg, before)
	}
	if d := cfg.withDefaults(); d.Partitions != 1 || d.QueueSize != 1<<16 || d.MaxBatch != 1000 || d.Logger == nil {
		t.Errorf("withDefaults: %+v", d)
	}
}
