package rules

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/keymeter/keymeter/internal/detect"
)

func ids(t *testing.T, src detect.Source) []string {
	t.Helper()
	rs, err := src.Parse()
	if err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	var out []string
	for _, r := range rs {
		out = append(out, r.ID)
	}
	slices.Sort(out)
	return out
}

// Outside a checkout (no ./rules), the built-in rules are the files of
// this directory, and they compile.
func TestResolveOutsideTheRepository(t *testing.T) {
	want := ids(t, detect.Source{Paths: []string{"."}})
	if len(want) == 0 {
		t.Fatal("no rules in the rules directory")
	}
	t.Chdir(t.TempDir())
	src := Resolve(nil)
	if src.FS == nil {
		t.Fatalf("Resolve(nil) without ./rules = %+v, want the built-in rules", src)
	}
	if got := ids(t, src); !slices.Equal(got, want) {
		t.Fatalf("built-in rules %v, files %v", got, want)
	}
	set, err := src.Load(detect.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != len(want) {
		t.Fatalf("compiled %d rules, want %d", set.Len(), len(want))
	}
	// The detector's reloader takes the same source: loaded once, then
	// nothing changes.
	swaps := 0
	rl := &detect.Reloader{Paths: src.Paths, FS: src.FS, Swap: func(*detect.RuleSet) { swaps++ }}
	for range 2 {
		if _, err := rl.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	if swaps != 1 {
		t.Fatalf("reloader swapped %d times, want 1", swaps)
	}
}

func TestResolvePrefersGivenPathsThenDir(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if src := Resolve([]string{"my.yaml"}); src.FS != nil || !slices.Equal(src.Paths, []string{"my.yaml"}) {
		t.Fatalf("Resolve(my.yaml) = %+v", src)
	}
	if err := os.Mkdir(filepath.Join(dir, Dir), 0o750); err != nil {
		t.Fatal(err)
	}
	if src := Resolve(nil); src.FS != nil || !slices.Equal(src.Paths, []string{Dir}) {
		t.Fatalf("Resolve(nil) with ./rules = %+v, want ./rules", src)
	}
}

// deploy/kubernetes/base/rules is the detector's ConfigMap: the same files
// as this directory.
func TestKubernetesCopiesAreTheRules(t *testing.T) {
	const k8s = "../deploy/kubernetes/base/rules"
	mine, _ := filepath.Glob("*.yaml")
	theirs, _ := filepath.Glob(filepath.Join(k8s, "*.yaml"))
	if len(mine) == 0 {
		t.Fatal("no rules here")
	}
	var names []string
	for _, f := range theirs {
		names = append(names, filepath.Base(f))
	}
	if !slices.Equal(mine, names) {
		t.Fatalf("%s holds %v, rules/ holds %v: copy rules/*.yaml there", k8s, names, mine)
	}
	for _, f := range mine {
		a, _ := os.ReadFile(f)
		b, _ := os.ReadFile(filepath.Join(k8s, f))
		if !bytes.Equal(a, b) {
			t.Errorf("%s/%s differs from rules/%s: copy it", k8s, f, f)
		}
	}
}
