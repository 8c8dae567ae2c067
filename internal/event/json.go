package event

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// JSONEvent is the JSON form of a usage event (schemas/usage-event.schema.json),
// as decoded before its values are checked (Event).
type JSONEvent struct {
	ID         string `json:"id"`
	Time       string `json:"time"`
	Project    string `json:"project,omitempty"`
	KeyID      string `json:"key_id,omitempty"`
	Outcome    string `json:"outcome"`
	ClientIP   string `json:"client_ip,omitempty"`
	Country    string `json:"country,omitempty"`
	ASN        uint32 `json:"asn,omitempty"`
	Method     string `json:"method,omitempty"`
	Host       string `json:"host,omitempty"`
	Route      string `json:"route,omitempty"`
	Status     uint16 `json:"status,omitempty"`
	LatencyUS  uint32 `json:"latency_us,omitempty"`
	BytesIn    uint64 `json:"bytes_in,omitempty"`
	BytesOut   uint64 `json:"bytes_out,omitempty"`
	UserAgent  string `json:"user_agent,omitempty"`
	VerifierID string `json:"verifier_id,omitempty"`
	CostUnits  uint32 `json:"cost_units,omitempty"`
}

// MarshalJSON encodes e in its JSON form.
func (e Event) MarshalJSON() ([]byte, error) {
	j := JSONEvent{
		ID: e.ID, Project: e.Project, KeyID: e.KeyID, Outcome: e.Outcome.String(),
		ClientIP: e.ClientIP, Country: e.Country, ASN: e.ASN, Method: e.Method, Host: e.Host,
		Route: e.Route, Status: e.Status, LatencyUS: e.LatencyUS, BytesIn: e.BytesIn,
		BytesOut: e.BytesOut, UserAgent: e.UserAgent, VerifierID: e.VerifierID, CostUnits: e.CostUnits,
	}
	if !e.Time.IsZero() {
		j.Time = e.Time.UTC().Format(time.RFC3339Nano)
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes and validates the JSON form of an event.
func (e *Event) UnmarshalJSON(b []byte) error {
	ev, err := DecodeJSON(b)
	if err != nil {
		return err
	}
	*e = ev
	return nil
}

// DecodeJSON decodes and validates one event in its JSON form. Unknown
// fields, wrong types and bad values are refused with the field name.
func DecodeJSON(data []byte) (Event, error) {
	var j JSONEvent
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return Event{}, jsonError(err)
	}
	if dec.More() {
		return Event{}, &FieldError{Field: "(document)", Reason: "trailing data after the event object"}
	}
	return j.Event()
}

// Event checks j's values and builds the event; an error is a *FieldError
// naming the field.
func (j JSONEvent) Event() (Event, error) {
	e := Event{
		ID: j.ID, Project: j.Project, KeyID: j.KeyID, ClientIP: j.ClientIP, Country: j.Country,
		ASN: j.ASN, Method: j.Method, Host: j.Host, Route: j.Route, Status: j.Status,
		LatencyUS: j.LatencyUS, BytesIn: j.BytesIn, BytesOut: j.BytesOut, UserAgent: j.UserAgent,
		VerifierID: j.VerifierID, CostUnits: j.CostUnits,
	}
	if j.Time == "" {
		return Event{}, &FieldError{Field: "time", Reason: "required (RFC 3339, e.g. 2026-11-25T12:00:00Z)"}
	}
	t, err := time.Parse(time.RFC3339Nano, j.Time)
	if err != nil {
		return Event{}, &FieldError{Field: "time", Reason: fmt.Sprintf("%q is not an RFC 3339 time (e.g. 2026-11-25T12:00:00Z)", j.Time)}
	}
	e.Time = t.UTC()
	if j.Outcome == "" {
		return Event{}, &FieldError{Field: "outcome", Reason: "required"}
	}
	if e.Outcome, err = ParseOutcome(j.Outcome); err != nil {
		return Event{}, &FieldError{Field: "outcome", Reason: err.Error()}
	}
	if e.ClientIP != "" {
		if _, err := netip.ParseAddr(e.ClientIP); err != nil {
			return Event{}, &FieldError{Field: "client_ip", Reason: fmt.Sprintf("%q is not an IPv4 or IPv6 address", e.ClientIP)}
		}
	}
	if e.Status > 999 {
		return Event{}, &FieldError{Field: "status", Reason: fmt.Sprintf("HTTP status %d out of range 0-999", e.Status)}
	}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}

func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return &FieldError{Field: te.Field, Reason: fmt.Sprintf("wrong type: got JSON %s, want %s", te.Value, jsonKind(te.Type.Kind().String()))}
	case errors.As(err, &se):
		return &FieldError{Field: "(document)", Reason: fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, err)}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.TrimPrefix(err.Error(), "json: unknown field ")
		return &FieldError{Field: strings.Trim(name, `"`), Reason: "unknown field"}
	case errors.Is(err, io.EOF):
		return &FieldError{Field: "(document)", Reason: "empty input"}
	}
	return &FieldError{Field: "(document)", Reason: err.Error()}
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "string"
	case "uint16", "uint32", "uint64":
		return "non-negative integer"
	}
	return k
}

// NDJSONReader reads events from newline-delimited JSON, one per line;
// blank lines are skipped. Errors carry the line number.
type NDJSONReader struct {
	sc   *bufio.Scanner
	line int
	fast *fastDecoder
}

// NewNDJSONReader reads events from r.
func NewNDJSONReader(r io.Reader) *NDJSONReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 4*1024*1024)
	return &NDJSONReader{sc: sc, fast: newFastDecoder()}
}

// Next returns the next event, or io.EOF at the end.
func (r *NDJSONReader) Next() (Event, error) {
	for r.sc.Scan() {
		r.line++
		b := r.sc.Bytes()
		var e Event
		if r.fast.decode(b, &e) {
			return e, nil
		}
		b = bytes.TrimSpace(b)
		if len(b) == 0 {
			continue
		}
		e, err := DecodeJSON(b)
		if err != nil {
			var fe *FieldError
			if errors.As(err, &fe) {
				fe.Line = r.line
			}
			return Event{}, err
		}
		return e, nil
	}
	if err := r.sc.Err(); err != nil {
		return Event{}, fmt.Errorf("line %d: %w", r.line+1, err)
	}
	return Event{}, io.EOF
}

// Line is the number of the line last read.
func (r *NDJSONReader) Line() int { return r.line }

// AppendJSON appends the JSON form of e (the same fields and names as
// MarshalJSON, without its allocations) to b.
func (e *Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, e.ID)
	if !e.Time.IsZero() {
		b = append(b, `,"time":"`...)
		b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	str := func(name, v string) {
		if v != "" {
			b = append(b, name...)
			b = appendJSONString(b, v)
		}
	}
	num := func(name string, v uint64) {
		if v != 0 {
			b = append(b, name...)
			b = strconv.AppendUint(b, v, 10)
		}
	}
	str(`,"project":`, e.Project)
	str(`,"key_id":`, e.KeyID)
	str(`,"outcome":`, e.Outcome.String())
	str(`,"client_ip":`, e.ClientIP)
	str(`,"country":`, e.Country)
	num(`,"asn":`, uint64(e.ASN))
	str(`,"method":`, e.Method)
	str(`,"host":`, e.Host)
	str(`,"route":`, e.Route)
	num(`,"status":`, uint64(e.Status))
	num(`,"latency_us":`, uint64(e.LatencyUS))
	num(`,"bytes_in":`, e.BytesIn)
	num(`,"bytes_out":`, e.BytesOut)
	str(`,"user_agent":`, e.UserAgent)
	str(`,"verifier_id":`, e.VerifierID)
	num(`,"cost_units":`, uint64(e.CostUnits))
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string, escaping as encoding/json
// does (control characters, quote, backslash, <, >, &, U+2028/9; invalid
// UTF-8 becomes U+FFFD).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// LineDecoder decodes one NDJSON event line at a time, with the fast path
// and its interned strings kept across calls; one per goroutine.
type LineDecoder struct{ fast *fastDecoder }

// NewLineDecoder returns a decoder for lines of one stream.
func NewLineDecoder() *LineDecoder { return &LineDecoder{fast: newFastDecoder()} }

// Decode decodes one line (no newline); errors are *FieldError without a line number.
func (d *LineDecoder) Decode(line []byte) (Event, error) {
	var e Event
	if d.fast.decode(line, &e) {
		return e, nil
	}
	return DecodeJSON(bytes.TrimSpace(line))
}
