package loadgen

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ReadKeysFile reads key_id,project,secret lines, skipping blanks and
// comments, and names the file and line of a bad one.
func TestReadKeysFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "keys.csv")
	if err := os.WriteFile(good, []byte("# demo keys\nkey_a,proj,s1\n\n key_b,proj,s2 \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ks, err := ReadKeysFile(good)
	if err != nil || len(ks) != 2 || ks[1] != (Key{ID: "key_b", Project: "proj", Secret: "s2"}) {
		t.Fatalf("keys %+v, err %v", ks, err)
	}
	bad := filepath.Join(dir, "bad.csv")
	if err := os.WriteFile(bad, []byte("key_a,proj,s1\nkey_b,proj\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKeysFile(bad); err == nil || !strings.Contains(err.Error(), "bad.csv:2: want key_id,project,secret") {
		t.Fatalf("bad line: err %v", err)
	}
}
