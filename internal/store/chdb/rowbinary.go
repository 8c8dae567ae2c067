package chdb

import (
	"encoding/binary"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendEvent encodes one event in RowBinary, in eventColumns order.
func appendEvent(b []byte, e *event.Event) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(e.Time.UnixMilli())) // DateTime64(3)
	b = appendString(b, e.Project)
	b = appendString(b, e.KeyID)
	b = appendString(b, e.ID)
	b = appendString(b, e.Outcome.String())
	b = appendString(b, e.ClientIP)
	b = appendString(b, e.Country)
	b = binary.LittleEndian.AppendUint32(b, e.ASN)
	b = appendString(b, e.Method)
	b = appendString(b, e.Host)
	b = appendString(b, e.Route)
	b = binary.LittleEndian.AppendUint16(b, e.Status)
	b = binary.LittleEndian.AppendUint32(b, e.LatencyUS)
	b = binary.LittleEndian.AppendUint64(b, e.BytesIn)
	b = binary.LittleEndian.AppendUint64(b, e.BytesOut)
	b = appendString(b, e.UserAgent)
	b = appendString(b, e.VerifierID)
	b = binary.LittleEndian.AppendUint32(b, e.CostUnits)
	return b
}

// appendRollup encodes one bucket in RowBinary, in rollupColumns order.
func appendRollup(b []byte, r *store.RollupRow) []byte {
	b = binary.LittleEndian.AppendUint32(b, r.Minute)
	b = appendString(b, r.Project)
	b = appendString(b, r.KeyID)
	b = appendString(b, r.Outcome)
	b = appendString(b, r.Route)
	b = appendString(b, r.Country)
	b = binary.LittleEndian.AppendUint64(b, r.Requests)
	b = binary.LittleEndian.AppendUint64(b, r.BytesIn)
	b = binary.LittleEndian.AppendUint64(b, r.BytesOut)
	b = binary.LittleEndian.AppendUint64(b, r.CostUnits)
	b = binary.AppendUvarint(b, uint64(len(r.IPHashes)))
	for _, h := range r.IPHashes {
		b = binary.LittleEndian.AppendUint64(b, h)
	}
	return b
}
