package verifier

import "github.com/keymeter/keymeter/internal/event"

// StatusCode maps an outcome to the HTTP status of the refusal (200 when
// the request passes): 401 when the credential itself is missing or bad,
// 403 when a valid key may not do this, 429 when it may, but not now.
func StatusCode(o event.Outcome) int {
	switch o {
	case event.OutcomeValid:
		return 200
	case event.OutcomeMissing, event.OutcomeMalformed, event.OutcomeUnknown, event.OutcomeRevoked, event.OutcomeExpired:
		return 401
	case event.OutcomeSuspended, event.OutcomeIPDenied, event.OutcomeScopeDenied, event.OutcomeBlockedIP:
		return 403
	case event.OutcomeRateLimited, event.OutcomeQuotaExceeded, event.OutcomeThrottled:
		return 429
	}
	return 500
}
