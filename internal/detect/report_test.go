package detect

import (
	"bytes"
	"flag"
	"os"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestTestReportGolden(t *testing.T) {
	rules, err := ParsePaths("testdata/failing.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if WriteTestReport(&buf, RunTests(rules, CompileOptions{}), true) {
		t.Error("report says all passed")
	}
	const golden = "testdata/failing.golden"
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("got\n%s\nwant\n%s(go test -run TestTestReportGolden -update to accept)", buf.Bytes(), want)
	}
}
