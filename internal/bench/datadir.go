package bench

import (
	"os"
	"path/filepath"
)

// DataDir is where a benchmark keeps its state: dir when given, else a new
// temporary directory named for the benchmark (keymeter-bench-NAME-*).
// cleanup removes a temporary directory unless keep; it never removes a
// given one.
func DataDir(dir string, keep bool, name string) (string, func(), error) {
	if dir != "" {
		return dir, func() {}, nil
	}
	d, err := os.MkdirTemp("", "keymeter-bench-"+name+"-")
	if err != nil {
		return "", nil, err
	}
	if keep {
		return d, func() {}, nil
	}
	return d, func() { os.RemoveAll(d) }, nil
}

// RevokeRule revokes a key seen from five countries within 30 minutes: the
// rule bench revoke-e2e times, since the starter pack judges only keys with
// history and the bench's keys are seconds old.
const RevokeRule = `id: bench-revoke
version: 1
name: five countries
severity: high
mode: enforce
match: key_id != "" && outcome == "valid" && country != ""
aggregate: {group_by: [key_id], window: 30m, distinct: [country]}
suppress: 2h
actions:
  - {type: revoke, when: distinct.country >= 5, corroboration: none}
`

// WriteRevokeRule writes RevokeRule into dir/rules and returns that
// directory, for --rules.
func WriteRevokeRule(dir string) (string, error) {
	rulesDir := filepath.Join(dir, "rules")
	if err := os.MkdirAll(rulesDir, 0o750); err != nil {
		return "", err
	}
	return rulesDir, os.WriteFile(filepath.Join(rulesDir, "bench.yaml"), []byte(RevokeRule), 0o600)
}
