package api_test

import (
	"encoding/json"
	"testing"

	"github.com/keymeter/keymeter/internal/api"
)

// TestSecretResponsesNotStored: the answers carrying a key's secret
// (create, rotate) say Cache-Control: no-store, so that no browser or
// proxy cache keeps the secret. They did not before.
func TestSecretResponsesNotStored(t *testing.T) {
	e := setup(t)
	st, h, body := e.raw("POST", "/v1/keys", bearerAdmin, "application/json", `{"project":"p"}`)
	if st != 201 || h.Get("Cache-Control") != "no-store" {
		t.Fatalf("create: %d Cache-Control %q", st, h.Get("Cache-Control"))
	}
	var c api.CreatedJSON
	if err := json.Unmarshal([]byte(body), &c); err != nil || c.Secret == "" {
		t.Fatalf("create body: %v", err)
	}
	st, h, body = e.raw("POST", "/v1/keys/"+c.Key.ID+"/rotate", bearerAdmin, "application/json", `{"grace_period":"1h"}`)
	if st != 201 || h.Get("Cache-Control") != "no-store" || !json.Valid([]byte(body)) {
		t.Fatalf("rotate: %d Cache-Control %q", st, h.Get("Cache-Control"))
	}
}
