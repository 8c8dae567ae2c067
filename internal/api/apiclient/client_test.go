package apiclient_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/api/apiclient"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

func server(t *testing.T) string {
	t.Helper()
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 1})
	table, svc := natstest.Keys(t, b)
	tok, _ := api.ParseToken("admin:" + api.HashToken("client-token"))
	srv, err := api.New(api.Config{Tokens: []api.Token{tok}, Keys: svc, KeyTable: table})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs.URL
}

func TestClientKeyLifecycle(t *testing.T) {
	url := server(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := apiclient.New(apiclient.Config{Server: url, Token: "client-token"})
	if err != nil {
		t.Fatal(err)
	}
	cr, err := c.CreateKey(ctx, api.CreateKeyRequest{Project: "p1", Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	if cr.Secret == "" || cr.Key.Project != "p1" {
		t.Fatalf("created %+v", cr.Key)
	}
	ks, err := c.ListKeys(ctx, apiclient.KeyFilter{Project: "p1", PageSize: 1})
	if err != nil || len(ks) != 1 || ks[0].ID != cr.Key.ID {
		t.Fatalf("list: %v %+v", err, ks)
	}
	// The key service answers once its change is back in the table.
	for k, err := c.RevokeKey(ctx, cr.Key.ID, "test"); err != nil || k.Status != "revoked"; k, err = c.Key(ctx, cr.Key.ID) {
		if err != nil {
			t.Fatal(err)
		}
		if ctx.Err() != nil {
			t.Fatalf("status %s after revoke", k.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Error answers come back as the API's own error, status included, and the
// message names the code and the field.
func TestClientErrorIsAPIError(t *testing.T) {
	url := server(t)
	ctx := context.Background()
	c, _ := apiclient.New(apiclient.Config{Server: url, Token: "client-token"})
	_, err := c.Key(ctx, "key_doesnotexist")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != "not_found" {
		t.Fatalf("unknown key: %v (%#v)", err, ae)
	}
	_, err = c.CreateKey(ctx, api.CreateKeyRequest{})
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Field == "" || !strings.Contains(err.Error(), "field "+ae.Field) {
		t.Fatalf("no project: %v (%#v)", err, ae)
	}
	bad, _ := apiclient.New(apiclient.Config{Server: url, Token: "wrong"})
	if _, err := bad.ListKeys(ctx, apiclient.KeyFilter{}); !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("wrong token: %v", err)
	}
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	err := apiclient.Config{Server: "ftp://x"}.Validate()
	if err == nil || !strings.Contains(err.Error(), "token") || !strings.Contains(err.Error(), "--server") {
		t.Fatalf("got %v", err)
	}
}

func TestTimeAndLogFilter(t *testing.T) {
	if got := apiclient.Time("1700000000"); got != "2023-11-14T22:13:20Z" {
		t.Errorf("unix seconds: %s", got)
	}
	if got, err := time.Parse(time.RFC3339, apiclient.Time("1h")); err != nil || time.Since(got) < 59*time.Minute {
		t.Errorf("1h ago: %v %v", got, err)
	}
	if got := apiclient.Time("yesterday"); got != "yesterday" {
		t.Errorf("left for the API to judge: %s", got)
	}
	v := apiclient.LogFilter{Key: "k", Status: "500-599", From: "1700000000"}.Values()
	if v.Encode() != "from=2023-11-14T22%3A13%3A20Z&key=k&status=500-599" {
		t.Errorf("values: %s", v.Encode())
	}
}
