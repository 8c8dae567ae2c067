package natsbus_test

import (
	"testing"

	"github.com/keymeter/keymeter/internal/bus/natsbus"
)

func TestRedactHidesEveryUserinfo(t *testing.T) {
	got := natsbus.Redact("nats://u:secret@n1:4222,nats://n2:4222,tls://tok@n3:4222")
	if want := "nats://***@n1:4222,nats://n2:4222,tls://***@n3:4222"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}
