// Package rules holds the starter detection rules, built into the binary so
// that `keymeter dev` and the detector work from any directory (after `go
// install`, in a container) without a rules/ folder beside them.
package rules

import (
	"embed"
	"io/fs"
	"os"

	"github.com/keymeter/keymeter/internal/detect"
)

//go:embed *.yaml
var starter embed.FS

// Dir is where rules are looked for when none are named: ./rules, as in a
// checkout of the repository.
const Dir = "rules"

// FS is the starter rules: the *.yaml files of this directory.
func FS() fs.FS { return starter }

// Resolve says where a command's rules come from: the paths given (the
// --rules flag), or with none ./rules if it exists, or else the starter
// rules built into the binary.
func Resolve(paths []string) detect.Source {
	if len(paths) > 0 {
		return detect.Source{Paths: paths}
	}
	if _, err := os.Stat(Dir); err == nil {
		return detect.Source{Paths: []string{Dir}}
	}
	return detect.Source{FS: starter, Name: "built-in starter rules"}
}
