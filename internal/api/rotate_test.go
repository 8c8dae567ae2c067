package api_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/keymeter/keymeter/internal/api"
)

// A key is rotated once: rotating a rotated-out key again is a 409 naming
// it and its replacement, and never extends its grace period (security
// test 2026-11-27, finding 4: a second rotation with a long grace brought
// a retired key back). The rotated-out key shows its replacement and that
// it is retired.
func TestRotateRetiredKeyRefused(t *testing.T) {
	e := setup(t)
	var created api.CreatedJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys", adminSecret, map[string]any{"project": "proj_rot"}, 201), &created)
	id := created.Key.ID
	var rotated api.CreatedJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys/"+id+"/rotate", adminSecret, map[string]any{"grace_period": "0s"}, 201), &rotated)
	newID := rotated.Key.ID
	if newID == "" || newID == id || rotated.Key.ReplacedBy != "" {
		t.Fatalf("replacement: %+v", rotated.Key)
	}
	var old api.KeyJSON
	_ = json.Unmarshal(e.call("GET", "/v1/keys/"+id, readSecret, nil, 200), &old)
	if old.ReplacedBy != newID || old.GraceUntil == nil || !old.Retired {
		t.Fatalf("rotated-out key: %+v", old)
	}

	body := e.call("POST", "/v1/keys/"+id+"/rotate", adminSecret, map[string]any{"grace_period": "9999h"}, 409)
	var eb struct{ Error api.Error }
	if err := json.Unmarshal(body, &eb); err != nil {
		t.Fatal(err)
	}
	if eb.Error.Code != "already_rotated" || !strings.Contains(eb.Error.Message, id) || !strings.Contains(eb.Error.Message, newID) {
		t.Fatalf("second rotation: %s", body)
	}
	var after api.KeyJSON
	_ = json.Unmarshal(e.call("GET", "/v1/keys/"+id, readSecret, nil, 200), &after)
	if !after.GraceUntil.Equal(*old.GraceUntil) || !after.Retired || after.Version != old.Version {
		t.Fatalf("the refused rotation changed the old key: before %+v after %+v", old, after)
	}
	var list api.KeyList
	_ = json.Unmarshal(e.call("GET", "/v1/keys?project=proj_rot", readSecret, nil, 200), &list)
	if len(list.Keys) != 2 {
		t.Fatalf("keys after a refused rotation: %d, want 2 (no orphan replacement)", len(list.Keys))
	}
	// The replacement rotates as usual.
	e.call("POST", "/v1/keys/"+newID+"/rotate", adminSecret, map[string]any{"grace_period": "1h"}, 201)
}

// A suspension through the API is a person's: the key shows it (and the
// detector's timer never lifts it, see internal/detector).
func TestManualSuspensionShown(t *testing.T) {
	e := setup(t)
	var created api.CreatedJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys", adminSecret, map[string]any{"project": "proj_susp"}, 201), &created)
	id := created.Key.ID
	var k api.KeyJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys/"+id+"/suspend", adminSecret, nil, 200), &k)
	if k.Status != "suspended" || !strings.HasPrefix(k.SuspensionID, "manual:") || k.SuspendedUntil != nil {
		t.Fatalf("suspended: %+v", k)
	}
	var r api.KeyJSON
	_ = json.Unmarshal(e.call("POST", "/v1/keys/"+id+"/resume", adminSecret, nil, 200), &r)
	if r.Status != "active" || r.SuspensionID != "" {
		t.Fatalf("resumed: %+v", r)
	}
}
