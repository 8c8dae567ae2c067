package chdb

import (
	"encoding/binary"

	"github.com/keymeter/keymeter/internal/store"
)

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
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
