package kafkacluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/testfix/kafkacluster"
)

// TestClusterStartKillRestart: three KRaft nodes on the shipped
// server.properties start, and a killed node comes back on its storage.
func TestClusterStartKillRestart(t *testing.T) {
	t0 := time.Now()
	c := kafkacluster.New(t)
	t.Logf("3 nodes serving in %s", time.Since(t0).Round(time.Millisecond))
	if err := c.Kill(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 = time.Now()
	if err := c.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	t.Logf("node 2 back in %s", time.Since(t0).Round(time.Millisecond))
}
