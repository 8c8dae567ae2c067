package detect

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Lint lists every rule of a good set and reports the problems of a bad
// file with its name and line, without the rule list.
func TestLint(t *testing.T) {
	var out bytes.Buffer
	res, err := Lint(&out, DefaultCostLimit, "../../rules")
	if err != nil || res.Problems != 0 || res.Files == 0 {
		t.Fatalf("starter rules: %+v, %v\n%s", res, err, out.String())
	}
	set, err := LoadPaths(CompileOptions{}, "../../rules")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count("\n"+out.String(), "\nok  "); n != set.Len() {
		t.Fatalf("want an ok line per rule (%d), got %d:\n%s", set.Len(), n, out.String())
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("id: x\nversion: 1\nbogus_field: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	res, err = Lint(&out, DefaultCostLimit, dir)
	if err != nil || res.Problems == 0 || strings.Contains(out.String(), "ok  ") || !strings.Contains(out.String(), "bad.yaml") {
		t.Fatalf("bad file: %+v, %v\n%s", res, err, out.String())
	}
	if _, err := Lint(&out, DefaultCostLimit, t.TempDir()); err == nil || !strings.Contains(err.Error(), "no rule files") {
		t.Fatalf("empty dir: %v", err)
	}
	if got := FlattenErrors(errors.Join(errors.New("a"), errors.Join(errors.New("b"), errors.New("c")))); len(got) != 3 {
		t.Fatalf("flatten: %v", got)
	}
}
