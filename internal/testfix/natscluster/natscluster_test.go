package natscluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymeter/keymeter/internal/testfix/natscluster"
)

// TestClusterKillRestart: three nodes on the shipped config form one
// JetStream cluster; an R3 stream survives its leader's SIGKILL (a new
// leader takes writes) and the killed node rejoins on its storage.
func TestClusterKillRestart(t *testing.T) {
	c := natscluster.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	pub := func(n int) {
		for i := range n {
			for {
				pctx, pc := context.WithTimeout(ctx, 2*time.Second)
				_, err := js.Publish(pctx, "t", []byte{byte(i)})
				pc()
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("publish: %v", err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	pub(10)
	leader, ci, err := c.StreamLeader(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	if len(ci.Replicas) != 2 {
		t.Fatalf("stream T has %d followers, want 2 (3 replicas): %+v", len(ci.Replicas), ci)
	}
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	pub(10) // a new leader takes these
	nl, _, err := c.StreamLeader(ctx, "T")
	if err != nil || nl == leader {
		t.Fatalf("after killing %s: leader %d, %v", c.Nodes[leader].Name, nl, err)
	}
	if err := c.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	pub(10)
	s, _ := js.Stream(ctx, "T")
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 30 {
		t.Fatalf("stream holds %d messages, want 30", info.State.Msgs)
	}
}
