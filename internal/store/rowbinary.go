package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// rowDecoder decodes logColumns rows in RowBinary (chDB's output for the
// history scan) into events. The low-cardinality strings (project, key,
// outcome, country, method, host, route, agent, verifier) and the client
// addresses are interned, so a row costs one allocation: its event ID.
type rowDecoder struct {
	small    *strInterner
	ips      []string // direct-mapped cache of client addresses
	outcomes map[string]event.Outcome
}

const ipCacheSize = 1 << 15

func newRowDecoder() *rowDecoder {
	return &rowDecoder{small: newStrInterner(1<<16, 1<<12), ips: make([]string, ipCacheSize), outcomes: map[string]event.Outcome{}}
}

var errShortRow = errors.New("RowBinary: truncated row")

// rbReader walks a RowBinary buffer.
type rbReader struct {
	b   []byte
	err error
}

func (r *rbReader) u64() uint64 {
	if len(r.b) < 8 {
		r.err = errShortRow
		r.b = nil
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *rbReader) bytes() []byte {
	n, k := binary.Uvarint(r.b)
	if k <= 0 || uint64(len(r.b)-k) < n {
		r.err = errShortRow
		r.b = nil
		return nil
	}
	s := r.b[k : k+int(n)]
	r.b = r.b[k+int(n):]
	return s
}

// decodeEvents decodes a whole RowBinary result of logColumns, of about
// count rows (rows inserted since they were counted just grow the slice).
func (d *rowDecoder) decodeEvents(b []byte, count int) ([]event.Event, error) {
	evs := make([]event.Event, 0, count+count/64)
	r := rbReader{b: b}
	for len(r.b) > 0 {
		var e event.Event
		ms := int64(r.u64())
		e.Time = time.UnixMilli(ms).UTC()
		e.Project = d.small.str(r.bytes())
		e.KeyID = d.small.str(r.bytes())
		e.ID = string(r.bytes())
		outcome := r.bytes()
		o, ok := d.outcomes[string(outcome)]
		if !ok && r.err == nil {
			o, _ = event.ParseOutcome(string(outcome))
			d.outcomes[string(outcome)] = o
		}
		e.Outcome = o
		e.ClientIP = d.ip(r.bytes())
		e.Country = d.small.str(r.bytes())
		e.ASN = uint32(r.u64())
		e.Method = d.small.str(r.bytes())
		e.Host = d.small.str(r.bytes())
		e.Route = d.small.str(r.bytes())
		e.Status = uint16(r.u64())
		e.LatencyUS = uint32(r.u64())
		e.BytesIn = r.u64()
		e.BytesOut = r.u64()
		e.UserAgent = d.small.str(r.bytes())
		e.VerifierID = d.small.str(r.bytes())
		e.CostUnits = uint32(r.u64())
		if r.err != nil {
			return nil, fmt.Errorf("row %d: %w", len(evs)+1, r.err)
		}
		evs = append(evs, e)
	}
	return evs, nil
}

func (d *rowDecoder) ip(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	slot := hashBytes(b) & (ipCacheSize - 1)
	if s := d.ips[slot]; s == string(b) {
		return s
	}
	s := string(b)
	d.ips[slot] = s
	return s
}

// strInterner returns one string per distinct byte sequence, without
// allocating for ones it has seen; it forgets everything past max entries.
// A direct-mapped cache in front of the map answers most look-ups.
type strInterner struct {
	m     map[string]string
	max   int
	cache []string
	mask  uint32
}

func newStrInterner(max, cache int) *strInterner {
	return &strInterner{m: make(map[string]string, 1024), max: max, cache: make([]string, cache), mask: uint32(cache - 1)}
}

func (in *strInterner) str(b []byte) string {
	slot := hashBytes(b) & in.mask
	if s := in.cache[slot]; s == string(b) && (len(s) > 0 || len(b) == 0) {
		return s
	}
	if s, ok := in.m[string(b)]; ok {
		in.cache[slot] = s
		return s
	}
	if len(in.m) >= in.max {
		clear(in.m)
	}
	s := string(b)
	in.m[s] = s
	in.cache[slot] = s
	return s
}

// hashSeed seeds hashBytes, the hash of the direct-mapped caches.
var hashSeed = maphash.MakeSeed()

// hashBytes hashes all of b (a hash of its ends only, as the NDJSON reader
// uses, put 8000 addresses such as 10.3.12.2 in 1704 of 32768 slots).
func hashBytes(b []byte) uint32 { return uint32(maphash.Bytes(hashSeed, b)) }
