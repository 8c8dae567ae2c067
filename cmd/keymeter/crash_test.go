package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

// The aggregator is killed with SIGKILL at five random moments while
// 1,000,000 events are produced; afterwards the store holds each event
// exactly once and every key's count is what was produced.
func TestAggregatorSIGKILLExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes; not in -short")
	}
	bin := keymeterBinary(t)
	t.Run("nats", func(t *testing.T) {
		srv, err := natsbus.StartEmbedded(natsbus.EmbeddedConfig{DataDir: t.TempDir(), Listen: true, Port: -1})
		if err != nil {
			t.Fatalf("embedded NATS: %v", err)
		}
		defer srv.Shutdown()
		prefix := fmt.Sprintf("crash%d", time.Now().UnixNano()%1e9)
		b, err := natsbus.New(context.Background(), natsbus.Config{URL: srv.ClientURL(), CredsFile: srv.CredsFile(), Prefix: prefix, Partitions: 4})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close(context.Background())
		crashRun(t, bin, b, "5s", []string{"--bus", "nats", "--nats-url", srv.ClientURL(), "--nats-creds", srv.CredsFile(), "--bus-prefix", prefix, "--partitions", "4", "--ack-wait", "5s"})
	})
	t.Run("kafka", func(t *testing.T) {
		brokers := os.Getenv("KEYMETER_KAFKA_BROKERS")
		if brokers == "" {
			t.Fatal("KEYMETER_KAFKA_BROKERS is not set: start the broker with deploy/kafka/kafka.sh start (make test does)")
		}
		prefix := fmt.Sprintf("crash%d", time.Now().UnixNano()%1e9)
		b, err := kafkabus.New(context.Background(), kafkabus.Config{Brokers: strings.Split(brokers, ","), TopicPrefix: prefix + ".", Partitions: 4})
		if err != nil {
			t.Fatalf("Kafka at %s: %v", brokers, err)
		}
		defer b.Close(context.Background())
		// A killed member holds its partitions for the group session timeout
		// (10s): the last aggregator must not give up before it gets them.
		crashRun(t, bin, b, "25s", []string{"--bus", "kafka", "--kafka-brokers", brokers, "--bus-prefix", prefix, "--partitions", "4"})
	})
}

func crashRun(t *testing.T, bin string, b bus.Bus, idle string, busArgs []string) {
	const total, per, keys = 1_000_000, 1000, 200
	dataDir := t.TempDir()
	produced := make(map[string]int, keys)
	done := make(chan error, 1)
	// Produce over ~10 s while the aggregator is being killed.
	go func() {
		ctx := context.Background()
		now := time.Now().UTC()
		var enc []byte
		for bi := 0; bi < total/per; bi++ {
			key := fmt.Sprintf("key_crash_%03d", bi%keys)
			eb := event.Batch{ID: fmt.Sprintf("crash-%d", bi), Producer: "crash-test", Created: time.Now()}
			for i := range per {
				eb.Events = append(eb.Events, event.Event{ID: fmt.Sprintf("e-%d-%d", bi, i), Time: now, Project: "proj_crash",
					KeyID: key, Outcome: event.OutcomeValid, ClientIP: "198.51.100.1", Status: 200, CostUnits: 1})
			}
			enc = event.AppendBatch(enc[:0:0], &eb)
			if _, err := b.Publisher().Publish(ctx, bus.Message{Key: key, BatchID: eb.ID, Source: "crash-test", Data: enc}); err != nil {
				done <- err
				return
			}
			if bi%100 == 99 {
				time.Sleep(time.Second)
			}
		}
		done <- b.Publisher().Flush(ctx)
	}()
	for bi := 0; bi < total/per; bi++ {
		produced[fmt.Sprintf("key_crash_%03d", bi%keys)] += per
	}
	args := append([]string{"aggregator", "--data-dir", dataDir, "--admin-listen", "", "--flush-interval", "200ms",
		"--max-block-events", "50000", "--log-level", "warn"}, busArgs...)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for kill := range 5 {
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wait := time.Duration(800+rng.IntN(2200)) * time.Millisecond
		time.Sleep(wait)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", kill, err)
		}
		_ = cmd.Wait()
		t.Logf("aggregator killed with SIGKILL after %s (%d/5)", wait, kill+1)
	}
	if err := <-done; err != nil {
		t.Fatalf("producing: %v", err)
	}
	// A last aggregator drains everything and exits when idle.
	final := exec.Command(bin, append(args, "--stop-when-idle", idle, "--duration", "5m")...)
	final.Stdout, final.Stderr = os.Stderr, os.Stderr
	if err := final.Run(); err != nil {
		t.Fatalf("final aggregator: %v", err)
	}

	db, err := chdb.Open(chdb.Config{DataDir: filepath.Join(dataDir, "clickhouse")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	ctx := context.Background()
	n, err := db.Count(ctx, "requests")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.Conn().Query(ctx, "SELECT toUInt64(uniqExact(event_id)) FROM "+db.Database()+".requests", nil)
	if err != nil {
		t.Fatal(err)
	}
	var distinct uint64
	for rows.Next() {
		if err := rows.Scan(&distinct); err != nil {
			t.Fatal(err)
		}
	}
	rows.Close()
	if n != total || distinct != total {
		t.Fatalf("store holds %d events (%d distinct ids), produced %d", n, distinct, total)
	}
	for key, want := range produced {
		u, err := db.QuotaUsage(ctx, key, time.Now().Add(-24*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if int(u.Allowed) != want {
			t.Fatalf("%s: store counts %d, produced %d", key, u.Allowed, want)
		}
	}
}
