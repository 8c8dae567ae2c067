package store

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// appendLogRow encodes e as one RowBinary row of logColumns.
func appendLogRow(b []byte, e event.Event) []byte {
	str := func(s string) { b = binary.AppendUvarint(b, uint64(len(s))); b = append(b, s...) }
	u64 := func(v uint64) { b = binary.LittleEndian.AppendUint64(b, v) }
	u64(uint64(e.Time.UnixMilli()))
	str(e.Project)
	str(e.KeyID)
	str(e.ID)
	str(e.Outcome.String())
	str(e.ClientIP)
	str(e.Country)
	u64(uint64(e.ASN))
	str(e.Method)
	str(e.Host)
	str(e.Route)
	u64(uint64(e.Status))
	u64(uint64(e.LatencyUS))
	u64(e.BytesIn)
	u64(e.BytesOut)
	str(e.UserAgent)
	str(e.VerifierID)
	u64(uint64(e.CostUnits))
	return b
}

func TestDecodeEventsRowBinary(t *testing.T) {
	evs := []event.Event{
		{ID: "a-1", Time: time.UnixMilli(1795000000123).UTC(), Project: "p", KeyID: "key_1", Outcome: event.OutcomeRateLimited,
			ClientIP: "2001:db8::1", Country: "DE", ASN: 64500, Method: "GET", Host: "h", Route: "/v1/\t\n\\x", Status: 429,
			LatencyUS: 1234, BytesIn: 1 << 40, BytesOut: 7, UserAgent: "ua é \x00", VerifierID: "v1", CostUnits: 3},
		{ID: "a-2", Time: time.UnixMilli(1795000000124).UTC(), Outcome: event.OutcomeMissing, Status: 401},
	}
	var b []byte
	for _, e := range evs {
		b = appendLogRow(b, e)
	}
	d := newRowDecoder()
	for range 2 { // second time from the caches
		got, err := d.decodeEvents(b, 1)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, evs) {
			t.Fatalf("got  %+v\nwant %+v", got, evs)
		}
	}
	// Every truncation is an error naming the row, never a panic.
	for n := 1; n < len(b); n++ {
		if n == len(appendLogRow(nil, evs[0])) {
			continue // a whole first row
		}
		_, err := d.decodeEvents(b[:n], 0)
		if !errors.Is(err, errShortRow) {
			t.Fatalf("cut at %d of %d: err = %v", n, len(b), err)
		}
	}
}
