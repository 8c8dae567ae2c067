// Package kafkacluster runs a three-node Apache Kafka KRaft cluster
// (combined broker and controller per node) on loopback, from the Maven
// Central jars that deploy/kafka/kafka.sh fetches, on the shipped
// deploy/kafka/production/server.properties: each node's file is the
// shipped one followed by what differs for a node on one machine (ids,
// listeners, quorum, storage) and by settings sized for a small test
// machine (threads, segment size, fast session expiry), since a later key
// replaces an earlier one in a Java properties file. Nodes can be killed
// (SIGKILL) and restarted on their storage. The cluster tests and
// `keymeter bench chaos` use it.
package kafkacluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	kafkadeploy "github.com/keymeter/keymeter/deploy/kafka"
	"github.com/keymeter/keymeter/internal/testfix/freeport"
	"github.com/keymeter/keymeter/internal/testfix/nodeproc"
)

// Config configures Start. Zero fields take the defaults shown.
type Config struct {
	Dir          string        // required: node directories (config, storage, log) go under it
	Nodes        int           // 3
	Heap         string        // "-Xms128m -Xmx384m" per JVM
	StartTimeout time.Duration // 120s for the cluster to serve
	// Cache is where kafka.sh keeps the jars (default
	// $KEYMETER_CACHE/kafka, else ~/.cache/keymeter/kafka); missing jars
	// are fetched with the shipped kafka.sh and pom.xml.
	Cache string
}

// Node is one broker+controller.
type Node struct {
	ID                   int
	Port, ControllerPort int
	dir, props, logFile  string

	proc nodeproc.Proc
}

// Cluster is a running cluster.
type Cluster struct {
	Nodes []*Node
	cfg   Config
	libs  string
	log4j string
}

// overrides are appended to the shipped server.properties for one node on
// one (small) machine.
const overrides = `
############################# overrides: internal/testfix/kafkacluster #############################
node.id=%[1]d
listeners=PLAINTEXT://127.0.0.1:%[2]d,CONTROLLER://127.0.0.1:%[3]d
advertised.listeners=PLAINTEXT://127.0.0.1:%[2]d
controller.quorum.voters=%[4]s
log.dirs=%[5]s
# Sized for a 2-core machine running three brokers.
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
offsets.topic.num.partitions=8
log.segment.bytes=67108864
group.initial.rebalance.delay.ms=0
# A killed node re-registers once its old session expires (default 9s).
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=5000
`

// Start fetches the jars if needed, formats each node's storage with one
// cluster id, starts the nodes and waits until every one logged that it
// started and accepts connections. A node that does not start is an error
// naming it, with its log's tail.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Dir == "" {
		return nil, errors.New("kafkacluster: Config.Dir is required")
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Heap == "" {
		cfg.Heap = "-Xms128m -Xmx384m"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 120 * time.Second
	}
	if cfg.Cache == "" {
		root := os.Getenv("KEYMETER_CACHE")
		if root == "" {
			home, _ := os.UserHomeDir()
			root = filepath.Join(home, ".cache", "keymeter")
		}
		cfg.Cache = filepath.Join(root, "kafka")
	}
	if _, err := exec.LookPath("java"); err != nil {
		return nil, errors.New("kafkacluster: java not found (need Java 17+: apt-get install openjdk-17-jre-headless)")
	}
	c := &Cluster{cfg: cfg, libs: filepath.Join(cfg.Cache, "libs")}
	if err := c.fetch(ctx); err != nil {
		return nil, err
	}
	// Below the ephemeral range: a killed broker restarts on its ports,
	// which no other test's listener can have taken meanwhile.
	ports, err := freeport.N(2 * cfg.Nodes)
	if err != nil {
		return nil, fmt.Errorf("kafkacluster: %w", err)
	}
	var voters []string
	for i := range cfg.Nodes {
		n := &Node{ID: i + 1, Port: ports[2*i], ControllerPort: ports[2*i+1], dir: filepath.Join(cfg.Dir, fmt.Sprintf("kafka-%d", i+1))}
		c.Nodes = append(c.Nodes, n)
		voters = append(voters, fmt.Sprintf("%d@127.0.0.1:%d", n.ID, n.ControllerPort))
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("kafkacluster: %w", err)
	}
	c.log4j = filepath.Join(cfg.Dir, "log4j2.properties")
	if err := os.WriteFile(c.log4j, []byte(log4j), 0o640); err != nil {
		return nil, fmt.Errorf("kafkacluster: %w", err)
	}
	cid := clusterID()
	for _, n := range c.Nodes {
		if err := c.format(ctx, n, strings.Join(voters, ","), cid); err != nil {
			return nil, err
		}
	}
	for _, n := range c.Nodes {
		if err := c.launch(n); err != nil {
			c.Close()
			return nil, err
		}
	}
	for i := range c.Nodes {
		if err := c.WaitReady(ctx, i); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

const log4j = `status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
logger.controller.name = org.apache.kafka.controller
logger.controller.level = warn
`

// fetch runs the shipped kafka.sh fetch (from a copy with the shipped
// pom.xml, so it works from any directory) unless the jars are cached.
func (c *Cluster) fetch(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(c.libs, ".stamp")); err == nil {
		return nil
	}
	tmp, err := os.MkdirTemp("", "kafkacluster-fetch")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := os.WriteFile(filepath.Join(tmp, "kafka.sh"), kafkadeploy.Script, 0o750); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "pom.xml"), kafkadeploy.POM, 0o640); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(tmp, "kafka.sh"), "fetch")
	cmd.Env = append(os.Environ(), "KEYMETER_CACHE="+filepath.Dir(c.cfg.Cache))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kafkacluster: kafka.sh fetch: %v\n%s", err, out)
	}
	return nil
}

func clusterID() string {
	for {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		id := base64.RawURLEncoding.EncodeToString(b)
		if !strings.HasPrefix(id, "-") {
			return id
		}
	}
}

func (c *Cluster) java(heap string, args ...string) []string {
	a := strings.Fields(heap)
	a = append(a, "-XX:+UseSerialGC", "-Djava.awt.headless=true", "-Dlog4j2.configurationFile="+c.log4j,
		"-cp", filepath.Join(c.libs, "*"))
	return append(a, args...)
}

// format writes the node's properties and formats its storage.
func (c *Cluster) format(ctx context.Context, n *Node, voters, cid string) error {
	storage := filepath.Join(n.dir, "data")
	if err := os.MkdirAll(storage, 0o750); err != nil {
		return fmt.Errorf("kafkacluster: %w", err)
	}
	var props bytes.Buffer
	props.Write(kafkadeploy.ServerProperties)
	fmt.Fprintf(&props, overrides, n.ID, n.Port, n.ControllerPort, voters, storage)
	n.props = filepath.Join(n.dir, "server.properties")
	n.logFile = filepath.Join(n.dir, "kafka.log")
	if err := os.WriteFile(n.props, props.Bytes(), 0o640); err != nil {
		return fmt.Errorf("kafkacluster: %w", err)
	}
	cmd := exec.CommandContext(ctx, "java", c.java("-Xmx256m", "kafka.tools.StorageTool", "format", "-t", cid, "-c", n.props)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kafkacluster: format node %d storage: %v\n%s", n.ID, err, out)
	}
	return nil
}

func (c *Cluster) launch(n *Node) error {
	cmd := exec.Command("java", c.java(c.cfg.Heap, "-Dkafka.logs.dir="+n.dir, "kafka.Kafka", n.props)...)
	if err := n.proc.Start(cmd, n.logFile); err != nil {
		return fmt.Errorf("kafkacluster: start node %d: %w", n.ID, err)
	}
	return nil
}

// Addr is node i's client address.
func (c *Cluster) Addr(i int) string { return fmt.Sprintf("127.0.0.1:%d", c.Nodes[i].Port) }

// Brokers are every node's client address.
func (c *Cluster) Brokers() []string {
	var bs []string
	for i := range c.Nodes {
		bs = append(bs, c.Addr(i))
	}
	return bs
}

// Running reports whether node i's process is up.
func (c *Cluster) Running(i int) bool { return c.Nodes[i].proc.Running() }

// Kill sends SIGKILL to node i and waits for it to exit.
func (c *Cluster) Kill(i int) error {
	n := c.Nodes[i]
	if err := n.proc.Kill(); err != nil {
		return fmt.Errorf("kafkacluster: node %d %w", n.ID, err)
	}
	return nil
}

// Restart starts node i again on its storage and waits until it serves.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	if c.Running(i) {
		return fmt.Errorf("kafkacluster: node %d is running", c.Nodes[i].ID)
	}
	if err := c.launch(c.Nodes[i]); err != nil {
		return err
	}
	return c.WaitReady(ctx, i)
}

// WaitReady waits until node i logged "Kafka Server started" in this run
// and accepts connections, failing early when its process exits.
func (c *Cluster) WaitReady(ctx context.Context, i int) error {
	n := c.Nodes[i]
	deadline := time.Now().Add(c.cfg.StartTimeout)
	off := n.proc.LogOffset()
	for {
		if !c.Running(i) {
			return fmt.Errorf("kafkacluster: node %d exited during start-up\n%s", n.ID, c.LogTail(i, 40))
		}
		b, _ := os.ReadFile(n.logFile)
		if int64(len(b)) > off && bytes.Contains(b[off:], []byte("Kafka Server started")) {
			if conn, err := net.DialTimeout("tcp", c.Addr(i), time.Second); err == nil {
				return conn.Close()
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("kafkacluster: node %d not serving within %s\n%s", n.ID, c.cfg.StartTimeout, c.LogTail(i, 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// LogTail is the last lines of node i's log.
func (c *Cluster) LogTail(i, lines int) string {
	b, _ := os.ReadFile(c.Nodes[i].logFile)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return fmt.Sprintf("kafka node %d log:\n%s", c.Nodes[i].ID, strings.Join(ls, "\n"))
}

// Close kills every node (the storage stays in Dir).
func (c *Cluster) Close() {
	for i := range c.Nodes {
		if c.Running(i) {
			_ = c.Kill(i)
		}
	}
}
