package main

import (
	"encoding/json"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/api/apiclient"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

// keymeter keys create/update --kind and keys show reach the API and back
// (issue 14 item 2), and --from durations are sent as RFC 3339.
func TestKeysKindCLI(t *testing.T) {
	bin := keymeterBinary(t)
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 1})
	table, svc := natstest.Keys(t, b)
	tok, _ := api.ParseToken("admin:" + api.HashToken("cli-token"))
	a, err := api.New(api.Config{Tokens: []api.Token{tok}, Keys: svc, KeyTable: table})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(a)
	defer hs.Close()
	run := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command(bin, append(args, "--server", hs.URL, "-o", "json")...)
		cmd.Env = append(cmd.Environ(), "KEYMETER_TOKEN=cli-token")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("keymeter %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	var c api.CreatedJSON
	if err := json.Unmarshal(run("keys", "create", "--project", "p", "--kind", "mobile"), &c); err != nil || c.Key.Kind != "mobile" {
		t.Fatalf("create --kind mobile: %+v %v", c.Key, err)
	}
	var k api.KeyJSON
	if err := json.Unmarshal(run("keys", "update", c.Key.ID, "--kind", "batch"), &k); err != nil || k.Kind != "batch" {
		t.Fatalf("update --kind batch: %+v %v", k, err)
	}
	if err := json.Unmarshal(run("keys", "show", c.Key.ID), &k); err != nil || k.Kind != "batch" {
		t.Fatalf("show: %+v %v", k, err)
	}
	cmd := exec.Command(bin, "keys", "create", "--project", "p", "--kind", "desktop", "--server", hs.URL)
	cmd.Env = append(cmd.Environ(), "KEYMETER_TOKEN=cli-token")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "kind") {
		t.Fatalf("--kind desktop accepted: %s", out)
	}
	if got := apiclient.Time("24h"); !strings.HasSuffix(got, "Z") || len(got) != len("2026-11-25T00:00:00Z") {
		t.Fatalf("apiclient.Time(24h) = %q", got)
	}
}
