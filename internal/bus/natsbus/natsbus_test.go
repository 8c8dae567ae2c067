package natsbus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/bustest"
	"github.com/keymeter/keymeter/internal/testfix/freeport"
)

var prefixSeq atomic.Int64

func TestConformance(t *testing.T) {
	dir := t.TempDir()
	// Restarts keep the port so clients reconnect to the same URL: one
	// from below the kernel's ephemeral range, which no other test's
	// listener can take while the server is down (see freeport).
	port, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	cfg := EmbeddedConfig{DataDir: dir, Listen: true, Port: port}
	srv, err := StartEmbedded(cfg)
	if err != nil {
		t.Fatalf("embedded nats-server did not start: %v", err)
	}
	url := srv.ClientURL()
	t.Cleanup(func() { srv.Shutdown() })

	stop := func(t *testing.T) { srv.Shutdown() }
	start := func(t *testing.T) {
		var err error
		for range 50 { // the port may linger briefly
			if srv, err = StartEmbedded(cfg); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("embedded nats-server did not restart: %v", err)
	}
	bustest.Run(t, bustest.Harness{
		Name: "nats",
		New: func(t *testing.T, o bustest.Options) bus.Bus {
			b, err := New(context.Background(), Config{
				URL: url, CredsFile: srv.CredsFile(), Prefix: fmt.Sprintf("t%d", prefixSeq.Add(1)),
				Partitions: o.Partitions, MaxPending: o.MaxPending, PublishTimeout: 3 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
		PublishRaw: func(ctx context.Context, b bus.Bus, key string, data []byte) error {
			nb := b.(*Bus)
			msg := nats.NewMsg(nb.partitionSubject(bus.Partition(key, nb.Partitions())))
			msg.Data = data
			_, err := nb.js.PublishMsg(ctx, msg)
			return err
		},
		Stop:            stop,
		Start:           start,
		Restart:         func(t *testing.T) { stop(t); start(t) },
		DropsDuplicates: true,
		AckWait:         time.Second,
		CompareAndSet:   true,
	})
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{Partitions: -1}, "partitions -1 out of range"},
		{Config{Prefix: "a.b"}, "prefix \"a.b\""},
		{Config{Replicas: 9}, "replicas 9 out of range"},
		{Config{MaxAge: time.Minute, DuplicateWindow: time.Hour}, "duplicate-window"},
	}
	for _, c := range cases {
		err := c.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.cfg, err, c.want)
		}
	}
	// Every problem at once, and nothing changed.
	c := Config{Partitions: -1, Prefix: "a.b"}
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "partitions") || !strings.Contains(err.Error(), "prefix") {
		t.Errorf("both problems: %v", err)
	}
	if c.MaxPending != 0 || c.Replicas != 0 {
		t.Errorf("Validate filled defaults: %+v", c)
	}
}

// A second process binding the same group and partition takes it over; the
// first one's consumer reports ErrConsumerLost instead of sharing acks.
func TestConsumerTakenOverIsLost(t *testing.T) {
	srv, err := StartEmbedded(EmbeddedConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	ctx := context.Background()
	b, err := New(ctx, Config{Prefix: "lost", Partitions: 1}, WithEmbedded(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	for i := range 3 {
		if _, err := b.Publisher().Publish(ctx, bus.Message{Key: "k", BatchID: fmt.Sprint("m", i), Source: "t", Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	_ = b.Publisher().Flush(ctx)
	first, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "g", AckWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close(context.Background())
	if ds, _ := first.Fetch(ctx, 10, 2*time.Second); len(ds) == 0 {
		t.Fatal("nothing delivered")
	}
	// Unacked deliveries pending: a second binder recreates the consumer.
	second, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: "g", AckWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close(context.Background())
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := first.Fetch(ctx, 10, 500*time.Millisecond)
		if errors.Is(err, bus.ErrConsumerLost) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first consumer never noticed the take-over (last: %v)", err)
		}
	}
}
