// Package kafkatest gives tests a real Kafka broker: KEYMETER_KAFKA_BROKERS
// if set (CI starts one with deploy/kafka/kafka.sh), else one this test
// process starts with the same script; a broker that cannot be had fails
// the test. Private brokers are for tests that kill theirs.
package kafkatest

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

	"github.com/keymeter/keymeter/internal/testfix/freeport"
)

var (
	brokerOnce sync.Once
	brokerAddr []string
	brokerErr  error
	topicSeq   atomic.Int64
)

// Brokers returns the shared broker's addresses.
func Brokers(t testing.TB) []string {
	t.Helper()
	brokerOnce.Do(func() {
		if env := os.Getenv("KEYMETER_KAFKA_BROKERS"); env != "" {
			brokerAddr = strings.Split(env, ",")
		} else {
			if out, err := kafkaScript("fetch"); err != nil {
				brokerErr = fmt.Errorf("kafka.sh fetch: %v\n%s", err, out)
				return
			}
			if out, err := kafkaScript("start"); err != nil {
				brokerErr = fmt.Errorf("kafka.sh start: %v\n%s", err, out)
				return
			}
			brokerAddr = []string{"127.0.0.1:" + envOr("KAFKA_PORT", "19092")}
		}
		brokerErr = waitPort(brokerAddr[0], 30*time.Second)
	})
	if brokerErr != nil {
		t.Fatalf("no Kafka broker (set KEYMETER_KAFKA_BROKERS or make deploy/kafka/kafka.sh work): %v", brokerErr)
	}
	return brokerAddr
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func waitPort(addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("broker %s not reachable after %v: %w", addr, limit, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// scriptPath finds deploy/kafka/kafka.sh: KEYMETER_KAFKA_SCRIPT, or up from
// the package directory to the repository root.
func scriptPath() (string, error) {
	if p := os.Getenv("KEYMETER_KAFKA_SCRIPT"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "deploy", "kafka", "kafka.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("deploy/kafka/kafka.sh not found above the test directory; set KEYMETER_KAFKA_SCRIPT")
		}
		dir = parent
	}
}

// kafkaScript runs kafka.sh sub with the environment plus env.
func kafkaScript(sub string, env ...string) (string, error) {
	p, err := scriptPath()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", p, sub)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// PrivateBroker is a broker of this test process alone, on its own ports
// and storage, for tests that kill it: killing the shared broker would
// fail other packages' tests running at the same time under go test ./...
type PrivateBroker struct {
	Addr string
	env  []string
}

// StartPrivateBroker starts a PrivateBroker, killed at cleanup.
func StartPrivateBroker(t *testing.T) *PrivateBroker {
	t.Helper()
	Brokers(t) // the shared broker's set-up also fetched the jars, if needed
	if out, err := kafkaScript("fetch"); err != nil {
		t.Fatalf("kafka.sh fetch: %v\n%s", err, out)
	}
	port, cport := FreePort(t), FreePort(t)
	pb := &PrivateBroker{
		Addr: fmt.Sprintf("127.0.0.1:%d", port),
		env: []string{
			"KAFKA_DATA_DIR=" + t.TempDir(),
			fmt.Sprintf("KAFKA_PORT=%d", port),
			fmt.Sprintf("KAFKA_CONTROLLER_PORT=%d", cport),
		},
	}
	// Registered after TempDir, so it runs before the directory goes.
	t.Cleanup(func() {
		if out, err := kafkaScript("kill", pb.env...); err != nil {
			t.Errorf("kafka.sh kill (private broker): %v\n%s", err, out)
		}
	})
	pb.Start(t)
	return pb
}

// Start starts the broker (again).
func (pb *PrivateBroker) Start(t *testing.T) {
	t.Helper()
	if out, err := kafkaScript("start", pb.env...); err != nil {
		t.Fatalf("kafka.sh start (private broker %s): %v\n%s", pb.Addr, err, out)
	}
}

// Kill kills the broker (SIGKILL).
func (pb *PrivateBroker) Kill(t *testing.T) {
	t.Helper()
	if out, err := kafkaScript("kill", pb.env...); err != nil {
		t.Fatalf("kafka.sh kill (private broker %s): %v\n%s", pb.Addr, err, out)
	}
}

// FreePort is a TCP port free on 127.0.0.1 now, from below the kernel's
// ephemeral range (see freeport): the broker that binds it takes seconds
// to start, and a killed one restarts on it.
func FreePort(t *testing.T) int {
	t.Helper()
	p, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Prefix returns a topic prefix no other test (or earlier run) uses.
func Prefix(t testing.TB) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, t.Name())
	if len(name) > 60 {
		name = name[:60]
	}
	return fmt.Sprintf("kmtest.%s.%d.%d.", name, time.Now().UnixNano(), topicSeq.Add(1))
}
