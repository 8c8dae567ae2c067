package detector

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/store"
)

// RuleModeGroup marks a rule-mode override on the decisions log: a
// Decision with this group, no action (ACTION_UNSPECIFIED, so verifiers'
// block lists and other readers pass it by), the rule's id and the mode an
// operator set. Every detector follows the log from its start and applies
// the latest override of each rule to its engine (see FollowRuleModes).
const RuleModeGroup = detect.ReservedGroup

// ModeFile clears a rule's override: the rule acts in its file's mode again.
const ModeFile = "file"

// ParseSwitchMode parses the mode of a switch: enforce, dry_run, or file
// (MODE_UNSPECIFIED: the override is cleared).
func ParseSwitchMode(mode string) (keymeterv1.Mode, error) {
	if mode == ModeFile {
		return keymeterv1.Mode_MODE_UNSPECIFIED, nil
	}
	m, err := detect.ParseOverrideMode(mode)
	if err != nil {
		return 0, fmt.Errorf("mode %q: accepted values are enforce, dry_run, file (back to the rule file's mode)", mode)
	}
	return m, nil
}

// RuleModeMessage is the encoded override of rule ruleID to mode (enforce,
// dry_run, or file to clear it), set by actor.
func RuleModeMessage(ruleID, mode, actor string, now time.Time) ([]byte, error) {
	m, err := ParseSwitchMode(mode)
	if err != nil {
		return nil, err
	}
	reason := fmt.Sprintf("rule %s switched to %s by %s", ruleID, mode, actor)
	if mode == ModeFile {
		reason = fmt.Sprintf("rule %s switched back to its file's mode by %s", ruleID, actor)
	}
	return proto.Marshal(&keymeterv1.Decision{
		Id:           "rule-mode/" + ruleID + "/" + strconv.FormatInt(now.UnixNano(), 36),
		TimeUnixNano: now.UnixNano(), RuleId: ruleID, Mode: m, Group: RuleModeGroup,
		Action: keymeterv1.Action_ACTION_UNSPECIFIED,
		Reason: reason,
	})
}

// ModeSwitch publishes rule-mode overrides on the bus (api.RuleModes).
type ModeSwitch struct {
	Bus bus.Decisions
	// Known, if set, tells whether a rule id exists; unknown ids are
	// refused with detect.ErrUnknownRule. Without it every id is accepted
	// (an API without a detector cannot know the rules).
	Known func(ruleID string) bool
}

// SetRuleMode publishes the override of ruleID to mode (enforce or dry_run).
func (m ModeSwitch) SetRuleMode(ctx context.Context, ruleID, mode, actor string) error {
	if m.Known != nil && !m.Known(ruleID) {
		return fmt.Errorf("%w %q", detect.ErrUnknownRule, ruleID)
	}
	raw, err := RuleModeMessage(ruleID, mode, actor, time.Now())
	if err != nil {
		return err
	}
	return m.Bus.PublishDecision(ctx, RuleModeGroup, raw)
}

// ApplyRuleMode applies one message of the decisions log to e when it is a
// rule-mode override; it reports whether it was one. An override is known by
// all of: the reserved group, no action, and an id "rule-mode/<rule>/..."
// (as RuleModeMessage writes it); the engine never emits the reserved group
// (detect.EscapeGroup), so detection decisions grouped by client data can
// never pass for one.
func ApplyRuleMode(e *detect.Engine, data []byte, log *slog.Logger) bool {
	var d keymeterv1.Decision
	if proto.Unmarshal(data, &d) != nil || !isRuleModeSwitch(&d) {
		return false
	}
	if err := e.SetModeOverride(d.GetRuleId(), d.GetMode()); err != nil {
		log.Warn("detector: rule-mode override not applied", "rule", d.GetRuleId(), "err", err)
		return false
	}
	log.Info("detector: rule mode overridden", "rule", d.GetRuleId(), "mode", detect.ModeName(d.GetMode()))
	return true
}

func isRuleModeSwitch(d *keymeterv1.Decision) bool {
	return d.GetGroup() == RuleModeGroup && d.GetRuleId() != "" &&
		d.GetAction() == keymeterv1.Action_ACTION_UNSPECIFIED &&
		strings.HasPrefix(d.GetId(), "rule-mode/"+d.GetRuleId()+"/")
}

// RestoreRuleModes applies the latest switch of each rule recorded in the
// audit trail (action rule.mode, written by the API for every switch). The
// audit trail has no retention limit, unlike the decisions log, so a switch
// made longer ago than the log keeps still holds on a detector started
// now. It returns the number of rules whose switch it applied.
func RestoreRuleModes(ctx context.Context, a store.AuditLog, e *detect.Engine, log *slog.Logger) (int, error) {
	es, err := a.Audit(ctx, store.AuditQuery{Action: "rule.mode", Limit: 10000})
	if err != nil {
		return 0, err
	}
	seen := map[string]bool{}
	n := 0
	for _, x := range es { // newest first
		if seen[x.Target] {
			continue
		}
		seen[x.Target] = true
		var d struct {
			Mode string `json:"mode"`
		}
		if json.Unmarshal([]byte(x.Detail), &d) != nil {
			continue
		}
		m, err := ParseSwitchMode(d.Mode)
		if err != nil {
			continue
		}
		if err := e.SetModeOverride(x.Target, m); err != nil {
			log.Warn("detector: recorded rule-mode switch not applied", "rule", x.Target, "err", err)
			continue
		}
		n++
	}
	return n, nil
}

// FollowRuleModes applies the overrides of the whole retained decisions log
// (so a detector started later has them), then every new one, until ctx
// ends.
func FollowRuleModes(ctx context.Context, ds bus.Decisions, e *detect.Engine, log *slog.Logger) error {
	return ds.SubscribeDecisionsSince(ctx, time.Unix(0, 0), func(data []byte) { ApplyRuleMode(e, data, log) })
}
