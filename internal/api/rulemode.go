package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/detector"
)

// RuleModes switches a rule between enforce and dry-run on every detector
// (detector.ModeSwitch: an override published on the bus).
type RuleModes interface {
	// SetRuleMode returns an error wrapping detect.ErrUnknownRule when the
	// rule is known not to exist.
	SetRuleMode(ctx context.Context, ruleID, mode, actor string) error
}

// RuleModeRequest is the body of PUT /v1/rules/{id}/mode: enforce,
// dry_run, or file (the override is cleared: the rule file's mode again).
type RuleModeRequest struct {
	Mode string `json:"mode"`
}

// RuleModeResponse answers PUT /v1/rules/{id}/mode: the override is on
// the bus; detectors apply it as they receive it.
type RuleModeResponse struct {
	ID     string `json:"id"`
	Mode   string `json:"mode"`
	Status string `json:"status"` // "published"
}

func (s *Server) setRuleMode(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.RuleModes == nil {
		return unavailable("switching rule modes (no bus)")
	}
	var req RuleModeRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if _, err := detector.ParseSwitchMode(req.Mode); err != nil {
		return badRequest("mode", "%v", err)
	}
	id := r.PathValue("id")
	c, _ := r.Context().Value(actorKey{}).(caller)
	err := s.cfg.RuleModes.SetRuleMode(r.Context(), id, req.Mode, c.label)
	if errors.Is(err, detect.ErrUnknownRule) {
		return &Error{Status: 404, Code: "not_found", Message: "no loaded rule has the id " + id}
	}
	if err := s.audited(r, "rule.mode", id, req, err); err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, RuleModeResponse{ID: id, Mode: req.Mode, Status: "published"})
	return nil
}
