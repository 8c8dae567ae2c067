package kafkabus_test

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
)

// The tests run against a real Kafka broker: KEYMETER_KAFKA_BROKERS if set
// (CI starts one with deploy/kafka/kafka.sh), else one this test process
// starts with the same script. A broker that cannot be had fails the tests.

var (
	brokerOnce sync.Once
	brokerAddr []string
	brokerErr  error
	topicSeq   atomic.Int64
)

func brokers(t testing.TB) []string {
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

func kafkaScript(sub string) (string, error) {
	p, err := scriptPath()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", p, sub).CombinedOutput()
	return string(out), err
}

// prefix returns a topic prefix no other test (or earlier run) uses.
func prefix(t testing.TB) string {
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
