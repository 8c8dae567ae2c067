package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// rowDecoder decodes logColumns rows in Native format (chDB's output for
// the history scan) into events. The low-cardinality strings (project, key,
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

var errShortRow = errors.New("Native: truncated result")

// rbReader walks a Native buffer.
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

// Native output (columns one after the other, block by block) costs the
// engine less than RowBinary (which writes field by field): the history scan
// reads it. A block: column count, row count, then per column its name,
// its type and its values; logColumns are Int64, String or UInt64.

// logColumnTypes are the types of logColumns, in order.
var logColumnTypes = [...]string{"Int64", "String", "String", "String", "String", "String", "String", "UInt64",
	"String", "String", "String", "UInt64", "UInt64", "UInt64", "UInt64", "String", "String", "UInt64"}

// decodeNative decodes a whole Native result of logColumns, of about count
// rows.
func (d *rowDecoder) decodeNative(b []byte, count int) ([]event.Event, error) {
	evs := make([]event.Event, 0, count+count/64)
	r := rbReader{b: b}
	for len(r.b) > 0 {
		ncols, k := binary.Uvarint(r.b)
		if k <= 0 {
			return nil, errShortRow
		}
		r.b = r.b[k:]
		nrows, k := binary.Uvarint(r.b)
		if k <= 0 || nrows > uint64(len(r.b)) {
			return nil, errShortRow
		}
		r.b = r.b[k:]
		if ncols != uint64(len(logColumnTypes)) {
			return nil, fmt.Errorf("Native: %d columns, want %d", ncols, len(logColumnTypes))
		}
		base := len(evs)
		evs = append(evs, make([]event.Event, nrows)...)
		blk := evs[base:]
		for c, want := range logColumnTypes {
			r.bytes() // name
			if typ := r.bytes(); r.err == nil && string(typ) != want {
				return nil, fmt.Errorf("Native: column %d is %s, want %s", c+1, typ, want)
			}
			if r.err != nil {
				return nil, r.err
			}
			if want != "String" {
				if uint64(len(r.b)) < 8*nrows {
					return nil, errShortRow
				}
				d.fixedColumn(c, blk, r.b[:8*nrows])
				r.b = r.b[8*nrows:]
				continue
			}
			for i := range blk {
				s := r.bytes()
				e := &blk[i]
				switch c {
				case 1:
					e.Project = d.small.str(s)
				case 2:
					e.KeyID = d.small.str(s)
				case 3:
					e.ID = string(s)
				case 4:
					o, ok := d.outcomes[string(s)]
					if !ok && r.err == nil {
						o, _ = event.ParseOutcome(string(s))
						d.outcomes[string(s)] = o
					}
					e.Outcome = o
				case 5:
					e.ClientIP = d.ip(s)
				case 6:
					e.Country = d.small.str(s)
				case 8:
					e.Method = d.small.str(s)
				case 9:
					e.Host = d.small.str(s)
				case 10:
					e.Route = d.small.str(s)
				case 15:
					e.UserAgent = d.small.str(s)
				case 16:
					e.VerifierID = d.small.str(s)
				}
			}
			if r.err != nil {
				return nil, r.err
			}
		}
	}
	return evs, nil
}

// fixedColumn sets column c (8-byte integers) of the events of a block.
func (d *rowDecoder) fixedColumn(c int, blk []event.Event, b []byte) {
	le := binary.LittleEndian
	for i := range blk {
		v := le.Uint64(b[8*i:])
		e := &blk[i]
		switch c {
		case 0:
			e.Time = time.UnixMilli(int64(v)).UTC()
		case 7:
			e.ASN = uint32(v)
		case 11:
			e.Status = uint16(v)
		case 12:
			e.LatencyUS = uint32(v)
		case 13:
			e.BytesIn = v
		case 14:
			e.BytesOut = v
		case 17:
			e.CostUnits = uint32(v)
		}
	}
}
