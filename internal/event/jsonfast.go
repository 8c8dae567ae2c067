package event

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"time"
)

// The fast path of NDJSON decoding: the usual shape of an event line (the
// schema's field names, plain strings without escapes, integers, an RFC 3339
// time) is decoded by hand with the low-cardinality strings interned; any
// line it does not recognise goes to DecodeJSON, which accepts or refuses it
// with the field named. So the fast path never changes what is accepted.

// interner returns one string per distinct byte sequence, without
// allocating for ones it has seen; it forgets everything past max entries.
// A direct-mapped cache in front of the map answers most look-ups.
type interner struct {
	m     map[string]string
	max   int
	cache []string
	mask  uint32
}

func newInterner(max, cache int) *interner {
	return &interner{m: make(map[string]string, 1024), max: max, cache: make([]string, cache), mask: uint32(cache - 1)}
}

// hashBytes is a cheap hash for the direct-mapped caches: the length and
// the first and last 8 bytes (a collision only costs a miss).
func hashBytes(b []byte) uint32 {
	var h uint64
	if len(b) >= 8 {
		h = binary.LittleEndian.Uint64(b) ^ binary.LittleEndian.Uint64(b[len(b)-8:])*0x9e3779b97f4a7c15
	} else {
		for _, c := range b {
			h = h<<8 | uint64(c)
		}
	}
	h ^= uint64(len(b)) * 0xff51afd7ed558ccd
	h *= 0xc4ceb9fe1a85ec53
	return uint32(h >> 32)
}

// get returns the interned string of b and whether it was known.
func (in *interner) get(b []byte) (string, bool) {
	slot := hashBytes(b) & in.mask
	if s := in.cache[slot]; s == string(b) && (len(s) > 0 || len(b) == 0) {
		return s, true
	}
	if s, ok := in.m[string(b)]; ok {
		in.cache[slot] = s
		return s, true
	}
	if len(in.m) >= in.max {
		clear(in.m)
	}
	s := string(b)
	in.m[s] = s
	in.cache[slot] = s
	return s, false
}

func (in *interner) str(b []byte) string {
	s, _ := in.get(b)
	return s
}

// fastDecoder holds the interned strings of a reader.
type fastDecoder struct {
	small  *interner // project, key, country, method, host, route, agent, verifier
	ips    []string  // direct-mapped cache of client addresses, validated once
	day    int64     // cache of the last date: "YYYY-MM-DD" packed, and its Unix seconds
	daySec int64
}

const ipCache = 1 << 15

func newFastDecoder() *fastDecoder {
	return &fastDecoder{small: newInterner(1<<16, 1<<12), ips: make([]string, ipCache), day: -1}
}

// ip returns the client address as a string, or false when it is not an
// address (the slow path then reports it).
func (d *fastDecoder) ip(b []byte) (string, bool) {
	if len(b) == 0 {
		return "", true
	}
	slot := hashBytes(b) & (ipCache - 1)
	if s := d.ips[slot]; s == string(b) {
		return s, true
	}
	if !isIPv4(b) {
		if _, err := netip.ParseAddr(string(b)); err != nil {
			return "", false
		}
	}
	s := string(b)
	d.ips[slot] = s
	return s, true
}

// isIPv4 accepts what netip.ParseAddr accepts as IPv4: four decimal fields
// of 0-255 without leading zeros.
func isIPv4(b []byte) bool {
	fields, n, digits := 0, 0, 0
	for i := 0; i <= len(b); i++ {
		if i == len(b) || b[i] == '.' {
			if digits == 0 || n > 255 {
				return false
			}
			fields++
			n, digits = 0, 0
			continue
		}
		c := b[i]
		if c < '0' || c > '9' || (digits == 1 && n == 0) {
			return false
		}
		n = n*10 + int(c-'0')
		digits++
	}
	return fields == 4
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// str reads a JSON string without escapes at b[i] == '"'; it returns the
// contents and the index after the closing quote, or ok false.
func str(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	i++
	q := bytes.IndexByte(b[i:], '"')
	if q < 0 {
		return nil, i, false
	}
	v := b[i : i+q]
	// Escapes, control characters, non-ASCII: the slow path (8 bytes at a time).
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	j := 0
	for ; j+8 <= len(v); j += 8 {
		w := binary.LittleEndian.Uint64(v[j:])
		bs := w ^ (lo * '\\')
		if (w|((w-lo*0x20)&^w)|((bs-lo)&^bs))&hi != 0 {
			return nil, i, false
		}
	}
	for ; j < len(v); j++ {
		if c := v[j]; c == '\\' || c < 0x20 || c >= 0x80 {
			return nil, i, false
		}
	}
	return v, i + q + 1, true
}

// uint reads a non-negative integer that fits max.
func uintAt(b []byte, i int, max uint64) (uint64, int, bool) {
	s := i
	var v uint64
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		d := uint64(b[i] - '0')
		if v > (max-d)/10 {
			return 0, i, false
		}
		v = v*10 + d
	}
	if i == s || (b[s] == '0' && i-s > 1) {
		return 0, i, false
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0, i, false
	}
	return v, i, true
}

func digits(b []byte, n int) (int64, bool) {
	if len(b) < n {
		return 0, false
	}
	var v int64
	for j := 0; j < n; j++ {
		c := b[j]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}

// parseTime reads "YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+hh:mm|-hh:mm)".
func (d *fastDecoder) parseTime(b []byte) (time.Time, bool) {
	if len(b) < 20 || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	y, ok1 := digits(b[0:], 4)
	mo, ok2 := digits(b[5:], 2)
	dd, ok3 := digits(b[8:], 2)
	h, ok4 := digits(b[11:], 2)
	mi, ok5 := digits(b[14:], 2)
	s, ok6 := digits(b[17:], 2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || mo < 1 || mo > 12 || dd < 1 || dd > 31 || h > 23 || mi > 59 || s > 59 {
		return time.Time{}, false
	}
	i := 19
	var ns int64
	if b[i] == '.' {
		i++
		st := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		n := i - st
		if n == 0 || n > 9 {
			return time.Time{}, false
		}
		v, _ := digits(b[st:], n)
		for k := n; k < 9; k++ {
			v *= 10
		}
		ns = v
	}
	var off int64
	switch {
	case i == len(b)-1 && b[i] == 'Z':
	case i == len(b)-6 && (b[i] == '+' || b[i] == '-') && b[i+3] == ':':
		oh, ok1 := digits(b[i+1:], 2)
		om, ok2 := digits(b[i+4:], 2)
		if !ok1 || !ok2 || oh > 23 || om > 59 {
			return time.Time{}, false
		}
		off = oh*3600 + om*60
		if b[i] == '-' {
			off = -off
		}
	default:
		return time.Time{}, false
	}
	key := y*10000 + mo*100 + dd
	if key != d.day {
		t := time.Date(int(y), time.Month(mo), int(dd), 0, 0, 0, 0, time.UTC)
		if t.Day() != int(dd) { // 2026-02-30
			return time.Time{}, false
		}
		d.day, d.daySec = key, t.Unix()
	}
	return time.Unix(d.daySec+h*3600+mi*60+s-off, ns).UTC(), true
}

// decode fills e from one line in the usual shape, or reports false.
func (d *fastDecoder) decode(b []byte, e *Event) bool {
	*e = Event{}
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipWS(b, i+1)
	var seen uint32
	if i < len(b) && b[i] == '}' {
		return false
	}
	var timeRaw, outcomeRaw []byte
	for {
		k, j, ok := str(b, i)
		if !ok {
			return false
		}
		i = skipWS(b, j)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return false
		}
		var bit uint32
		if b[i] == '"' {
			v, j, ok := str(b, i)
			if !ok {
				return false
			}
			i = j
			switch string(k) {
			case "id":
				e.ID, bit = string(v), 1<<0
			case "time":
				timeRaw, bit = v, 1<<1
			case "project":
				e.Project, bit = d.small.str(v), 1<<2
			case "key_id":
				e.KeyID, bit = d.small.str(v), 1<<3
			case "outcome":
				outcomeRaw, bit = v, 1<<4
			case "client_ip":
				ip, ok := d.ip(v)
				if !ok {
					return false
				}
				e.ClientIP, bit = ip, 1<<5
			case "country":
				e.Country, bit = d.small.str(v), 1<<6
			case "method":
				e.Method, bit = d.small.str(v), 1<<7
			case "host":
				e.Host, bit = d.small.str(v), 1<<8
			case "route":
				e.Route, bit = d.small.str(v), 1<<9
			case "user_agent":
				e.UserAgent, bit = d.small.str(v), 1<<10
			case "verifier_id":
				e.VerifierID, bit = d.small.str(v), 1<<11
			default:
				return false
			}
		} else {
			var max uint64
			switch string(k) {
			case "asn", "latency_us", "cost_units":
				max = 1<<32 - 1
			case "status":
				max = 999
			case "bytes_in", "bytes_out":
				max = 1<<64 - 1
			default:
				return false
			}
			v, j, ok := uintAt(b, i, max)
			if !ok {
				return false
			}
			i = j
			switch string(k) {
			case "asn":
				e.ASN, bit = uint32(v), 1<<12
			case "latency_us":
				e.LatencyUS, bit = uint32(v), 1<<13
			case "cost_units":
				e.CostUnits, bit = uint32(v), 1<<14
			case "status":
				e.Status, bit = uint16(v), 1<<15
			case "bytes_in":
				e.BytesIn, bit = v, 1<<16
			case "bytes_out":
				e.BytesOut, bit = v, 1<<17
			}
		}
		if seen&bit != 0 {
			return false // duplicate field: the slow path decides
		}
		seen |= bit
		i = skipWS(b, i)
		if i >= len(b) {
			return false
		}
		if b[i] == '}' {
			i++
			break
		}
		if b[i] != ',' {
			return false
		}
		i = skipWS(b, i+1)
	}
	if skipWS(b, i) != len(b) || len(timeRaw) == 0 || len(outcomeRaw) == 0 {
		return false
	}
	t, ok := d.parseTime(timeRaw)
	if !ok {
		return false
	}
	e.Time = t
	o := fastOutcome(outcomeRaw)
	if o == OutcomeUnspecified {
		return false
	}
	e.Outcome = o
	return e.Validate() == nil
}

func fastOutcome(b []byte) Outcome {
	for i := OutcomeValid; i < outcomeCount; i++ {
		if outcomeNames[i] == string(b) {
			return i
		}
	}
	return OutcomeUnspecified
}
