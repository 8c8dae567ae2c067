package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/keys"
)

// decodeEvents parses one event or an array of events strictly; an error
// names the index and the field ("[3].time").
func decodeEvents(body []byte) ([]event.Event, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, badRequest("", "empty body: want a usage event or an array of them")
	}
	var raws []json.RawMessage
	single := body[0] != '['
	if single {
		raws = []json.RawMessage{body}
	} else {
		dec := json.NewDecoder(bytes.NewReader(body))
		if err := dec.Decode(&raws); err != nil {
			return nil, badRequest("", "invalid JSON array: %v", err)
		}
		if _, err := dec.Token(); err != io.EOF {
			return nil, badRequest("", "trailing data after the JSON array")
		}
	}
	out := make([]event.Event, 0, len(raws))
	for i, raw := range raws {
		prefix := fmt.Sprintf("[%d].", i)
		if single {
			prefix = ""
		}
		var j event.JSONEvent // checked strictly here, then by the event package
		if err := decodeObject(raw, &j, prefix); err != nil {
			return nil, err
		}
		if j.ClientIP != "" {
			if a, err := netip.ParseAddr(j.ClientIP); err != nil || a.Zone() != "" || !ipRe.MatchString(j.ClientIP) {
				return nil, badRequest(prefix+"client_ip", "%sclient_ip %q: want an IPv4 or IPv6 address without zone, or leave it out (unknown)", prefix, j.ClientIP)
			}
		}
		t, err := time.Parse(time.RFC3339Nano, j.Time)
		if j.Time != "" && (err != nil || !rfc3339Re.MatchString(j.Time)) {
			return nil, badRequest(prefix+"time", "%stime %q: want an RFC 3339 time such as 2026-11-25T12:00:00Z", prefix, j.Time)
		}
		if j.Time != "" {
			if err := keys.CheckTime(prefix+"time", t); err != nil {
				return nil, keyErr(prefix+"time", err)
			}
		}
		e, err := j.Event()
		if err != nil {
			var fe *event.FieldError
			if errors.As(err, &fe) {
				return nil, badRequest(prefix+fe.Field, "%s%s: %s", prefix, fe.Field, fe.Reason)
			}
			return nil, badRequest(prefix, "event %d: %v", i, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// DroppedEvent is an event POST /v1/events accepted as valid but did not
// keep: too old for the store's retention, it would never be searchable.
type DroppedEvent struct {
	Index  int    `json:"index"`
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

// EventsResponse is the answer of POST /v1/events.
type EventsResponse struct {
	Accepted int            `json:"accepted"`
	Dropped  []DroppedEvent `json:"dropped,omitempty"`
}
