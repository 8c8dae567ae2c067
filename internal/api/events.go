package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/keymeter/keymeter/internal/event"
)

// decodeEvents parses one event or an array of events; an error names the
// index and the field.
func decodeEvents(body []byte) ([]event.Event, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, badRequest("", "empty body: want a usage event or an array of them")
	}
	var raws []json.RawMessage
	if body[0] == '[' {
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, badRequest("", "invalid JSON array: %v", err)
		}
	} else {
		raws = []json.RawMessage{body}
	}
	out := make([]event.Event, 0, len(raws))
	for i, raw := range raws {
		e, err := event.DecodeJSON(raw)
		if err != nil {
			var fe *event.FieldError
			if errors.As(err, &fe) {
				return nil, badRequest(fmt.Sprintf("[%d].%s", i, fe.Field), "event %d: %s", i, fe.Error())
			}
			return nil, badRequest(fmt.Sprintf("[%d]", i), "event %d: %v", i, err)
		}
		out = append(out, e)
	}
	return out, nil
}
