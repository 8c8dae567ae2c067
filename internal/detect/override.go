package detect

import (
	"errors"
	"fmt"
	"maps"

	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// ErrUnknownRule: no rule of the loaded set has the id.
var ErrUnknownRule = errors.New("detect: unknown rule")

// ParseOverrideMode parses the mode an operator may set on a rule: enforce
// or dry_run.
func ParseOverrideMode(s string) (keymeterv1.Mode, error) {
	switch s {
	case "enforce":
		return keymeterv1.Mode_MODE_ENFORCE, nil
	case "dry_run":
		return keymeterv1.Mode_MODE_DRY_RUN, nil
	}
	return 0, fmt.Errorf("mode %q: accepted values are enforce, dry_run", s)
}

// SetModeOverride makes rule ruleID act in mode (enforce or dry_run)
// whatever its rule file says, until the next call; MODE_UNSPECIFIED
// removes the override. The override is kept by id, so it survives hot
// reloads and applies to a rule loaded later; a disabled rule stays
// disabled. Safe from any goroutine; it takes effect on the next firing.
func (e *Engine) SetModeOverride(ruleID string, mode keymeterv1.Mode) error {
	switch mode {
	case keymeterv1.Mode_MODE_ENFORCE, keymeterv1.Mode_MODE_DRY_RUN, keymeterv1.Mode_MODE_UNSPECIFIED:
	default:
		return fmt.Errorf("detect: rule %s: mode override %s: accepted values are enforce, dry_run", ruleID, mode)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	m := map[string]keymeterv1.Mode{}
	if p := e.overrides.Load(); p != nil {
		m = maps.Clone(*p)
	}
	if mode == keymeterv1.Mode_MODE_UNSPECIFIED {
		delete(m, ruleID)
	} else {
		m[ruleID] = mode
	}
	e.overrides.Store(&m)
	return nil
}

// HasRule tells whether the rule set in force (or pending) has a rule ruleID.
func (e *Engine) HasRule(ruleID string) bool {
	for _, set := range []*RuleSet{e.pending.Load(), e.current.Load()} {
		if set == nil {
			continue
		}
		for _, r := range set.rules {
			if r.ID == ruleID {
				return true
			}
		}
	}
	return false
}

// ruleMode is the mode r acts in: its file's mode unless an operator
// overrode it (a disabled rule stays disabled).
func (e *Engine) ruleMode(r *compiledRule) keymeterv1.Mode {
	if r.mode == keymeterv1.Mode_MODE_DISABLED {
		return r.mode
	}
	if p := e.overrides.Load(); p != nil {
		if m, ok := (*p)[r.ID]; ok {
			return m
		}
	}
	return r.mode
}

func (e *Engine) overrideName(ruleID string) string {
	if p := e.overrides.Load(); p != nil {
		if m, ok := (*p)[ruleID]; ok {
			return ModeName(m)
		}
	}
	return ""
}

// withOverrides brings the override columns of counters published before
// the latest override up to date (an override arrives off the bus, between
// publications).
func (e *Engine) withOverrides(rs []RuleStats) []RuleStats {
	out := make([]RuleStats, len(rs))
	for i, c := range rs {
		c.Override = e.overrideName(c.ID)
		if c.Override != "" && c.Mode != "disabled" {
			c.Effective = c.Override
			if c.Tripped && c.Effective == "enforce" {
				c.Effective = "dry_run"
			}
		} else {
			c.Effective = c.Mode
			if c.Tripped && c.Effective == "enforce" {
				c.Effective = "dry_run"
			}
		}
		out[i] = c
	}
	return out
}
