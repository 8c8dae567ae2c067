package console

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"testing"
)

// pinned are the third-party assets, by the SHA-256 of the file embedded
// (assets/README.md says where each comes from). A changed or added file
// fails here until its pin is updated with its source.
var pinned = map[string]string{
	"htmx.min.js":       "e209dda5c8235479f3166defc7750e1dbcd5a5c1808b7792fc2e6733768fb447", // npm htmx.org@2.0.4 dist/htmx.min.js
	"uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f", // npm uplot@1.6.32 dist/uPlot.iife.min.js
	"uPlot.min.css":     "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04", // npm uplot@1.6.32 dist/uPlot.min.css
}

// ours are the console's own assets (not pinned).
var ours = map[string]bool{"console.js": true, "console.css": true}

func TestAssetsArePinned(t *testing.T) {
	entries, err := fs.ReadDir(assetFS, "assets")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		seen[name] = true
		if ours[name] {
			continue
		}
		want, ok := pinned[name]
		if !ok {
			t.Errorf("assets/%s is embedded but not pinned: add its npm source and SHA-256", name)
			continue
		}
		b, _ := assetFS.ReadFile("assets/" + name)
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != want {
			t.Errorf("assets/%s: sha256 %s, pinned %s", name, got, want)
		}
	}
	for name := range pinned {
		if !seen[name] {
			t.Errorf("pinned asset %s is not embedded", name)
		}
	}
}
