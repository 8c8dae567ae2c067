package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// appendNativeBlock encodes evs as one Native block of logColumns.
func appendNativeBlock(b []byte, evs []event.Event) []byte {
	str := func(s string) { b = binary.AppendUvarint(b, uint64(len(s))); b = append(b, s...) }
	u64 := func(v uint64) { b = binary.LittleEndian.AppendUint64(b, v) }
	b = binary.AppendUvarint(b, uint64(len(logColumnTypes)))
	b = binary.AppendUvarint(b, uint64(len(evs)))
	for c, typ := range logColumnTypes {
		str("c")
		str(typ)
		for _, e := range evs {
			switch c {
			case 0:
				u64(uint64(e.Time.UnixMilli()))
			case 1:
				str(e.Project)
			case 2:
				str(e.KeyID)
			case 3:
				str(e.ID)
			case 4:
				str(e.Outcome.String())
			case 5:
				str(e.ClientIP)
			case 6:
				str(e.Country)
			case 7:
				u64(uint64(e.ASN))
			case 8:
				str(e.Method)
			case 9:
				str(e.Host)
			case 10:
				str(e.Route)
			case 11:
				u64(uint64(e.Status))
			case 12:
				u64(uint64(e.LatencyUS))
			case 13:
				u64(e.BytesIn)
			case 14:
				u64(e.BytesOut)
			case 15:
				str(e.UserAgent)
			case 16:
				str(e.VerifierID)
			case 17:
				u64(uint64(e.CostUnits))
			}
		}
	}
	return b
}

func TestDecodeNative(t *testing.T) {
	evs := []event.Event{
		{ID: "a-1", Time: time.UnixMilli(1795000000123).UTC(), Project: "p", KeyID: "key_1", Outcome: event.OutcomeRateLimited,
			ClientIP: "2001:db8::1", Country: "DE", ASN: 64500, Method: "GET", Host: "h", Route: "/v1/\t\n\\x", Status: 429,
			LatencyUS: 1234, BytesIn: 1 << 40, BytesOut: 7, UserAgent: "ua é \x00", VerifierID: "v1", CostUnits: 3},
		{ID: "a-2", Time: time.UnixMilli(1795000000124).UTC(), Outcome: event.OutcomeMissing, Status: 401},
		{ID: "a-3", Time: time.UnixMilli(1795000000124).UTC(), Project: "p", KeyID: "key_1", ClientIP: "2001:db8::1", Country: "DE"},
	}
	one := appendNativeBlock(nil, evs[:1])
	b := appendNativeBlock(one, evs[1:]) // two blocks
	d := newRowDecoder()
	for range 2 { // the second time from the caches
		got, err := d.decodeNative(b, 1)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, evs) {
			t.Fatalf("got  %+v\nwant %+v", got, evs)
		}
	}
	// Every truncation but at the block boundary is an error, never a panic.
	for n := 1; n < len(b); n++ {
		if n == len(one) {
			continue
		}
		if _, err := d.decodeNative(b[:n], 0); !errors.Is(err, errShortRow) {
			t.Fatalf("cut at %d of %d: err = %v", n, len(b), err)
		}
	}
	// A column of another type is refused.
	bad := bytes.Replace(appendNativeBlock(nil, evs[:1]), []byte("UInt64"), []byte("UInt32"), 1)
	if _, err := d.decodeNative(bad, 0); err == nil || err.Error() != "Native: column 8 is UInt32, want UInt64" {
		t.Fatalf("a UInt32 column: err = %v", err)
	}
}
