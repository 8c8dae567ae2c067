package verifier

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/kafkabus"
)

// The Kafka tests use a real broker: KEYMETER_KAFKA_BROKERS if set, else the
// shared one deploy/kafka/kafka.sh starts (127.0.0.1:19092); the outage test
// starts a private broker of its own so that killing it disturbs no other
// test. A broker that cannot be had fails the tests.

var (
	kafkaOnce     sync.Once
	kafkaShared   []string
	kafkaErr      error
	kafkaTopicSeq atomic.Int64
)

func kafkaScript(env []string, sub string) (string, error) {
	p := os.Getenv("KEYMETER_KAFKA_SCRIPT")
	if p == "" {
		p = filepath.Join("..", "..", "deploy", "kafka", "kafka.sh")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", p, sub)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func sharedKafka(t testing.TB) []string {
	t.Helper()
	kafkaOnce.Do(func() {
		if env := os.Getenv("KEYMETER_KAFKA_BROKERS"); env != "" {
			kafkaShared = strings.Split(env, ",")
			return
		}
		if c, err := net.DialTimeout("tcp", "127.0.0.1:19092", time.Second); err == nil {
			c.Close() // a broker on the default port (CI's, or another package's tests)
			kafkaShared = []string{"127.0.0.1:19092"}
			return
		}
		for _, sub := range []string{"fetch", "start"} {
			if out, err := kafkaScript(nil, sub); err != nil {
				kafkaErr = fmt.Errorf("kafka.sh %s: %v\n%s", sub, err, out)
				return
			}
		}
		kafkaShared = []string{"127.0.0.1:19092"}
	})
	if kafkaErr != nil {
		t.Fatalf("no Kafka broker (set KEYMETER_KAFKA_BROKERS or make deploy/kafka/kafka.sh work): %v", kafkaErr)
	}
	return kafkaShared
}

// testKafka is a Kafka backend for one test: the shared broker with topics
// of its own, or a private broker that can be stopped and started.
type testKafka struct {
	t       testing.TB
	brokers []string
	prefix  string
	env     []string // private broker only
}

func newTestKafka(t testing.TB, private bool) *testKafka {
	t.Helper()
	k := &testKafka{t: t, brokers: sharedKafka(t),
		prefix: fmt.Sprintf("kmvtest.%d.%d.", time.Now().UnixNano(), kafkaTopicSeq.Add(1))}
	if private {
		port, cport := freePort(t), freePort(t)
		k.brokers = []string{"127.0.0.1:" + port}
		k.env = []string{"KAFKA_DATA_DIR=" + t.TempDir(), "KAFKA_PORT=" + port, "KAFKA_CONTROLLER_PORT=" + cport}
		t.Cleanup(func() {
			if out, err := kafkaScript(k.env, "kill"); err != nil {
				t.Errorf("kafka.sh kill: %v\n%s", err, out)
			}
		})
		k.start()
	}
	return k
}

func (k *testKafka) start() {
	k.t.Helper()
	if out, err := kafkaScript(k.env, "start"); err != nil {
		k.t.Fatalf("kafka.sh start: %v\n%s", err, out)
	}
}

func (k *testKafka) stop() {
	k.t.Helper()
	if out, err := kafkaScript(k.env, "kill"); err != nil {
		k.t.Fatalf("kafka.sh kill: %v\n%s", err, out)
	}
}

func (k *testKafka) connect(ctx context.Context) bus.Bus {
	k.t.Helper()
	cfg := kafkabus.Config{Brokers: k.brokers, TopicPrefix: k.prefix, Partitions: 4, SessionTimeout: 6 * time.Second}
	if k.env != nil {
		// The outage test wants publishes to fail within seconds (and
		// batches to spill to the spool), not to ride the outage out.
		cfg.MaxPending, cfg.WriteAttempts = 8, 3
	}
	b, err := kafkabus.New(ctx, cfg)
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

// testBackend is what the end-to-end tests need from a bus.
type testBackend interface {
	connect(ctx context.Context) bus.Bus
	stop()
	start()
}

// backends runs fn against embedded NATS and against Kafka. private asks for
// a Kafka broker that fn may stop.
func backends(t *testing.T, private bool, fn func(t *testing.T, be testBackend)) {
	t.Run("nats", func(t *testing.T) { fn(t, startNATS(t)) })
	t.Run("kafka", func(t *testing.T) {
		if testing.Short() {
			t.Skip("-short: the Kafka runs need a broker")
		}
		fn(t, newTestKafka(t, private))
	})
}
