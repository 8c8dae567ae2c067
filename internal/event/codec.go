package event

import (
	"errors"
	"fmt"
	"math"
	"time"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// The protobuf codec below is written by hand against
// schemas/keymeter/v1/keymeter.proto so that decoding a batch allocates
// nothing per event: strings point into the batch's bytes. Tests hold it
// byte-compatible with the generated code in keymeterv1.

// codecFields are the fields of each message this codec encodes and
// decodes. TestCodecCoversEveryProtoField fails when the .proto gains a
// field missing here, and round-trips a message with every field set
// through the codec.
var codecFields = map[string][]protowire.Number{
	"keymeter.v1.EventBatch": {1, 2, 3, 4},
	"keymeter.v1.UsageEvent": {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18},
}

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed")

// DecodeError says where in a batch decoding failed.
type DecodeError struct {
	Offset int    // byte offset in the batch
	Field  string // protobuf field path, e.g. "events[3].status"
	Reason string
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("event batch malformed at byte %d (%s): %s", e.Offset, e.Field, e.Reason)
}

func (e *DecodeError) Unwrap() error { return ErrMalformed }

// AppendBatch appends the protobuf encoding of b to dst.
func AppendBatch(dst []byte, b *Batch) []byte {
	dst = appendString(dst, 1, b.ID)
	dst = appendString(dst, 2, b.Producer)
	if !b.Created.IsZero() {
		dst = appendVarint(dst, 3, uint64(b.Created.UnixNano()))
	}
	for i := range b.Events {
		e := &b.Events[i]
		dst = protowire.AppendTag(dst, 4, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(eventSize(e)))
		dst = appendEvent(dst, e)
	}
	return dst
}

// AppendEvent appends the protobuf encoding of one UsageEvent to dst.
func AppendEvent(dst []byte, e *Event) []byte { return appendEvent(dst, e) }

func appendEvent(dst []byte, e *Event) []byte {
	dst = appendString(dst, 1, e.ID)
	if !e.Time.IsZero() {
		dst = appendVarint(dst, 2, uint64(e.Time.UnixNano()))
	}
	dst = appendString(dst, 3, e.Project)
	dst = appendString(dst, 4, e.KeyID)
	dst = appendVarint(dst, 5, uint64(e.Outcome))
	dst = appendString(dst, 6, e.ClientIP)
	dst = appendString(dst, 7, e.Country)
	dst = appendVarint(dst, 8, uint64(e.ASN))
	dst = appendString(dst, 9, e.Method)
	dst = appendString(dst, 10, e.Host)
	dst = appendString(dst, 11, e.Route)
	dst = appendVarint(dst, 12, uint64(e.Status))
	dst = appendVarint(dst, 13, uint64(e.LatencyUS))
	dst = appendVarint(dst, 14, e.BytesIn)
	dst = appendVarint(dst, 15, e.BytesOut)
	dst = appendString(dst, 16, e.UserAgent)
	dst = appendString(dst, 17, e.VerifierID)
	dst = appendVarint(dst, 18, uint64(e.CostUnits))
	return dst
}

func eventSize(e *Event) int {
	n := sizeString(1, e.ID)
	if !e.Time.IsZero() {
		n += sizeVarint(2, uint64(e.Time.UnixNano()))
	}
	n += sizeString(3, e.Project) + sizeString(4, e.KeyID) + sizeVarint(5, uint64(e.Outcome))
	n += sizeString(6, e.ClientIP) + sizeString(7, e.Country) + sizeVarint(8, uint64(e.ASN))
	n += sizeString(9, e.Method) + sizeString(10, e.Host) + sizeString(11, e.Route)
	n += sizeVarint(12, uint64(e.Status)) + sizeVarint(13, uint64(e.LatencyUS))
	n += sizeVarint(14, e.BytesIn) + sizeVarint(15, e.BytesOut)
	n += sizeString(16, e.UserAgent) + sizeString(17, e.VerifierID) + sizeVarint(18, uint64(e.CostUnits))
	return n
}

func tagSize(num protowire.Number) int { return protowire.SizeTag(num) }

func sizeString(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return tagSize(num) + protowire.SizeBytes(len(s))
}

func sizeVarint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return tagSize(num) + protowire.SizeVarint(v)
}

func appendString(dst []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendVarint(dst []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.VarintType)
	return protowire.AppendVarint(dst, v)
}

// DecodeBatch decodes data into b, reusing b.Events' capacity. The strings
// of the decoded batch and events point into data: data must not be
// modified while they are in use (clone what you keep longer).
func DecodeBatch(data []byte, b *Batch) error {
	*b = Batch{Events: b.Events[:0]}
	off := 0
	for off < len(data) {
		num, typ, n := consumeTag(data[off:])
		if n < 0 {
			return &DecodeError{Offset: off, Field: "batch", Reason: "bad field tag"}
		}
		off += n
		switch {
		case num == 1 && typ == protowire.BytesType:
			s, n := consumeString(data[off:])
			if n < 0 {
				return &DecodeError{Offset: off, Field: "id", Reason: "truncated string"}
			}
			b.ID, off = s, off+n
		case num == 2 && typ == protowire.BytesType:
			s, n := consumeString(data[off:])
			if n < 0 {
				return &DecodeError{Offset: off, Field: "producer", Reason: "truncated string"}
			}
			b.Producer, off = s, off+n
		case num == 3 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data[off:])
			if n < 0 {
				return &DecodeError{Offset: off, Field: "created_unix_nano", Reason: "bad varint"}
			}
			b.Created, off = time.Unix(0, int64(v)).UTC(), off+n
		case num == 4 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data[off:])
			if n < 0 {
				return &DecodeError{Offset: off, Field: fmt.Sprintf("events[%d]", len(b.Events)), Reason: "truncated event"}
			}
			if len(b.Events) < cap(b.Events) {
				b.Events = b.Events[:len(b.Events)+1]
			} else {
				b.Events = append(b.Events, Event{})
			}
			e := &b.Events[len(b.Events)-1]
			if err := decodeEvent(v, e); err != nil {
				var de *DecodeError
				if errors.As(err, &de) {
					de.Offset += off + (n - len(v))
					de.Field = fmt.Sprintf("events[%d].%s", len(b.Events)-1, de.Field)
				}
				return err
			}
			off += n
		default:
			n := protowire.ConsumeFieldValue(num, typ, data[off:])
			if n < 0 {
				return &DecodeError{Offset: off, Field: fmt.Sprintf("field %d", num), Reason: "bad field value"}
			}
			off += n
		}
	}
	return nil
}

// DecodeEvent decodes one protobuf UsageEvent; strings point into data.
func DecodeEvent(data []byte, e *Event) error { return decodeEvent(data, e) }

var eventFieldNames = [...]string{"", "id", "time_unix_nano", "project", "key_id", "outcome",
	"client_ip", "country", "asn", "method", "host", "route", "status", "latency_us",
	"bytes_in", "bytes_out", "user_agent", "verifier_id", "cost_units"}

// eventStringField[num] says UsageEvent field num is length-delimited.
var eventStringField = [len(eventFieldNames)]bool{1: true, 3: true, 4: true, 6: true, 7: true, 9: true, 10: true, 11: true, 16: true, 17: true}

func decodeEvent(data []byte, e *Event) error {
	*e = Event{}
	off := 0
	for off < len(data) {
		// The one-byte cases of consumeTag, consumeString and
		// consumeVarint are written out here: the calls do not inline.
		var num protowire.Number
		var typ protowire.Type
		if t := data[off]; t >= 1<<3 && t < 0x80 {
			num, typ = protowire.Number(t>>3), protowire.Type(t&7)
			off++
		} else {
			var n int
			if num, typ, n = protowire.ConsumeTag(data[off:]); n < 0 {
				return &DecodeError{Offset: off, Field: "tag", Reason: "bad field tag"}
			}
			off += n
		}
		if num >= 1 && int(num) < len(eventFieldNames) {
			if eventStringField[num] {
				if typ != protowire.BytesType {
					return &DecodeError{Offset: off, Field: eventFieldNames[num], Reason: "wrong wire type, want length-delimited"}
				}
				var s string
				if l := 0; off < len(data) && data[off] < 0x80 {
					if l = int(data[off]); l > len(data)-off-1 {
						return &DecodeError{Offset: off, Field: eventFieldNames[num], Reason: "truncated string"}
					}
					if l > 0 {
						s = unsafe.String(&data[off+1], l)
					}
					off += 1 + l
				} else {
					var n int
					if s, n = consumeString(data[off:]); n < 0 {
						return &DecodeError{Offset: off, Field: eventFieldNames[num], Reason: "truncated string"}
					}
					off += n
				}
				switch num {
				case 1:
					e.ID = s
				case 3:
					e.Project = s
				case 4:
					e.KeyID = s
				case 6:
					e.ClientIP = s
				case 7:
					e.Country = s
				case 9:
					e.Method = s
				case 10:
					e.Host = s
				case 11:
					e.Route = s
				case 16:
					e.UserAgent = s
				case 17:
					e.VerifierID = s
				}
				continue
			}
			if typ != protowire.VarintType {
				return &DecodeError{Offset: off, Field: eventFieldNames[num], Reason: "wrong wire type, want varint"}
			}
			var v uint64
			n := 1
			if off < len(data) && data[off] < 0x80 {
				v = uint64(data[off])
			} else if v, n = protowire.ConsumeVarint(data[off:]); n < 0 {
				return &DecodeError{Offset: off, Field: eventFieldNames[num], Reason: "bad varint"}
			}
			off += n
			switch num {
			case 2:
				e.Time = time.Unix(0, int64(v)).UTC()
			case 5:
				if v >= uint64(outcomeCount) {
					return &DecodeError{Offset: off - n, Field: "outcome", Reason: fmt.Sprintf("unknown outcome %d", v)}
				}
				e.Outcome = Outcome(v)
			case 8:
				if v > math.MaxUint32 {
					return &DecodeError{Offset: off - n, Field: "asn", Reason: "out of range"}
				}
				e.ASN = uint32(v)
			case 12:
				if v > 999 {
					return &DecodeError{Offset: off - n, Field: "status", Reason: fmt.Sprintf("HTTP status %d out of range 0-999", v)}
				}
				e.Status = uint16(v)
			case 13:
				e.LatencyUS = uint32(min(v, math.MaxUint32))
			case 14:
				e.BytesIn = v
			case 15:
				e.BytesOut = v
			case 18:
				if v > math.MaxUint32 {
					return &DecodeError{Offset: off - n, Field: "cost_units", Reason: "out of range"}
				}
				e.CostUnits = uint32(v)
			}
			continue
		}
		n := protowire.ConsumeFieldValue(num, typ, data[off:])
		if n < 0 {
			return &DecodeError{Offset: off, Field: fmt.Sprintf("field %d", num), Reason: "bad field value"}
		}
		off += n
	}
	return nil
}

// consumeTag, consumeVarint and consumeString are protowire's ConsumeTag,
// ConsumeVarint and ConsumeBytes (as a string) with the one-byte case
// inlined: nearly every tag, short string length and small number of an
// event is one byte (profiled: the calls were half of decoding's CPU).
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	if len(b) > 0 && b[0] >= 1<<3 && b[0] < 0x80 { // field number >= 1
		return protowire.Number(b[0] >> 3), protowire.Type(b[0] & 7), 1
	}
	return protowire.ConsumeTag(b)
}

func consumeVarint(b []byte) (uint64, int) {
	if len(b) > 0 && b[0] < 0x80 {
		return uint64(b[0]), 1
	}
	return protowire.ConsumeVarint(b)
}

func consumeString(b []byte) (string, int) {
	if len(b) > 0 && b[0] < 0x80 {
		l := int(b[0])
		switch {
		case l > len(b)-1:
			return "", -1 // truncated
		case l == 0:
			return "", 1
		}
		return unsafe.String(&b[1], l), 1 + l
	}
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return "", n
	}
	if len(v) == 0 {
		return "", n
	}
	return unsafe.String(&v[0], len(v)), n
}

// Validate checks what the bus codec cannot: required fields and ranges.
// It reports the first problem with the field name.
func (e *Event) Validate() error {
	switch {
	case e.ID == "":
		return &FieldError{Field: "id", Reason: "required"}
	case e.Time.IsZero() || e.Time.Unix() <= 0:
		return &FieldError{Field: "time", Reason: "required"}
	case !e.Outcome.Valid():
		return &FieldError{Field: "outcome", Reason: "required: one of valid, missing, malformed, unknown, revoked, expired, suspended, ip_denied, scope_denied, rate_limited, quota_exceeded, throttled, blocked_ip"}
	case e.Country != "" && !isCountry(e.Country):
		return &FieldError{Field: "country", Reason: fmt.Sprintf("%q is not an ISO 3166-1 alpha-2 code (two upper-case letters)", e.Country)}
	}
	return nil
}

func isCountry(s string) bool {
	return len(s) == 2 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z'
}

// FieldError is a bad value in a named field.
type FieldError struct {
	Line   int // line of an NDJSON file, 0 if not known
	Field  string
	Reason string
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: field %s: %s", e.Line, e.Field, e.Reason)
	}
	return fmt.Sprintf("field %s: %s", e.Field, e.Reason)
}

func (e *FieldError) Unwrap() error { return ErrMalformed }
