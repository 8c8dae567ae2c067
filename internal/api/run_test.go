package api_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/api/apiclient"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/testfix/natstest"
)

// The API role serves keys on its own key table (no store), its admin
// endpoints on the shared registry, and stops cleanly when ctx ends.
func TestRunServesUntilCancelled(t *testing.T) {
	b := natstest.Bus(t, nil, natsbus.Config{Partitions: 1})
	tok, _ := api.ParseToken("admin:" + api.HashToken("run-token"))
	addrs := make(chan [2]net.Addr, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- api.Run(ctx, api.RunConfig{Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Tokens: []api.Token{tok}, Bus: b,
			OnListen: func(a, admin net.Addr) { addrs <- [2]net.Addr{a, admin} }})
	}()
	var a [2]net.Addr
	select {
	case a = <-addrs:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	c, err := apiclient.New(apiclient.Config{Server: "http://" + a[0].String(), Token: "run-token"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateKey(ctx, api.CreateKeyRequest{Project: "p"}); err != nil {
		t.Fatalf("create through the role: %v", err)
	}
	resp, err := http.Get("http://" + a[1].String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}

func TestRunConfigValidateReportsEveryProblem(t *testing.T) {
	err := (&api.RunConfig{}).Validate()
	for _, want := range []string{"bus", "--listen", "admin token"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}
