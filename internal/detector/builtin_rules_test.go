package detector

import (
	"context"
	"testing"
)

// TestAssembleWithoutRules: with no rule paths and no ./rules, the role runs
// the starter rules built into the binary, as keymeter dev and keymeter
// detector document (it used to refuse: "RunConfig.Rules is empty").
func TestAssembleWithoutRules(t *testing.T) {
	b := newBus(t)
	t.Chdir(t.TempDir())
	role, err := Assemble(context.Background(), RunConfig{Bus: b})
	if err != nil {
		t.Fatalf("no rules given, no ./rules: %v", err)
	}
	if n := role.Engine().RuleSet().Len(); n == 0 {
		t.Fatal("no rules loaded")
	}
}
