package verifier

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/keymeter/keymeter/internal/bus"
)

// TestSpoolKeepsResent: the spool file keeps Message.Resent, and files
// written before the flag existed still read (as not resent).
func TestSpoolKeepsResent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	sp, err := openSpool(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []bus.Message{
		{Key: "k", BatchID: "fresh", Source: "s", Data: []byte("one")},
		{Key: "k", BatchID: "again", Source: "s", Data: []byte("two"), Resent: true},
	} {
		if err := sp.put(m, 1); err != nil {
			t.Fatal(err)
		}
	}
	// A file of the format before the flag: count, key, batch id, source, data.
	var old []byte
	old = binary.AppendUvarint(old, 2)
	for _, f := range []string{"k", "old", "s"} {
		old = binary.AppendUvarint(old, uint64(len(f)))
		old = append(old, f...)
	}
	old = append(old, "three"...)
	if err := os.WriteFile(sp.path(3), old, 0o640); err != nil {
		t.Fatal(err)
	}
	sp, err = openSpool(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		id, data string
		n        int
		resent   bool
	}{{"fresh", "one", 1, false}, {"again", "two", 1, true}, {"old", "three", 2, false}}
	for _, w := range want {
		if !sp.has(w.id) {
			t.Errorf("spool does not know batch %s", w.id)
		}
		seq, m, n, ok, err := sp.oldest()
		if !ok || err != nil || m.BatchID != w.id || string(m.Data) != w.data || n != w.n || m.Resent != w.resent {
			t.Fatalf("read %+v (%d events, ok %v, err %v), want %+v", m, n, ok, err, w)
		}
		if _, err := sp.remove(seq); err != nil {
			t.Fatal(err)
		}
		if sp.has(w.id) {
			t.Errorf("batch %s still known after remove", w.id)
		}
	}
}
