// Package natscluster runs a JetStream cluster of Debian's nats-server
// processes on loopback, on the shipped deploy/nats/nats-server.conf: each
// node's file includes it and overrides only what differs on one machine
// (listen addresses, monitoring port, store directory and size, the route
// list). Node name and passwords come from the environment, as the shipped
// file expects. Nodes can be killed (SIGKILL) and restarted on their
// storage. The cluster tests and `keymeter bench chaos` use it.
package natscluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	natsdeploy "github.com/keymeter/keymeter/deploy/nats"
	"github.com/keymeter/keymeter/internal/testfix/freeport"
	"github.com/keymeter/keymeter/internal/testfix/nodeproc"
)

// DefaultBinary is Debian's nats-server.
const DefaultBinary = "/usr/sbin/nats-server"

// Config configures Start. Zero fields take the defaults shown.
type Config struct {
	Dir          string        // required: node directories (config, store, log) go under it
	Nodes        int           // 3
	Binary       string        // $KEYMETER_NATS_SERVER, else DefaultBinary
	StartTimeout time.Duration // 60s: a node that does not serve by then fails Start
}

// Node is one nats-server of the cluster.
type Node struct {
	Name                       string // nats-1, nats-2, ...
	ClientPort, RoutePort, Mon int
	dir, conf, logFile         string

	proc nodeproc.Proc
}

// Cluster is a running cluster.
type Cluster struct {
	Nodes    []*Node
	Password string // of user keymeter (account KEYMETER)
	cfg      Config
	env      []string
}

// Start writes each node's configuration, starts the nodes and waits until
// every one answers /healthz and the cluster has a JetStream meta leader.
// A node that does not start is an error naming it, with its log's tail.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Dir == "" {
		return nil, errors.New("natscluster: Config.Dir is required")
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Binary == "" {
		cfg.Binary = os.Getenv("KEYMETER_NATS_SERVER")
	}
	if cfg.Binary == "" {
		cfg.Binary = DefaultBinary
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if _, err := os.Stat(cfg.Binary); err != nil {
		return nil, fmt.Errorf("natscluster: nats-server: %w (install Debian's nats-server or set KEYMETER_NATS_SERVER)", err)
	}
	c := &Cluster{cfg: cfg, Password: randomHex(16)}
	c.env = append(os.Environ(), "KEYMETER_NATS_PASSWORD="+c.Password, "SYS_NATS_PASSWORD="+randomHex(16))
	// Below the ephemeral range: a killed node restarts on its ports,
	// which no other test's listener can have taken meanwhile.
	ports, err := freeport.N(3 * cfg.Nodes)
	if err != nil {
		return nil, fmt.Errorf("natscluster: %w", err)
	}
	for i := range cfg.Nodes {
		n := &Node{Name: fmt.Sprintf("nats-%d", i+1), ClientPort: ports[3*i], RoutePort: ports[3*i+1], Mon: ports[3*i+2],
			dir: filepath.Join(cfg.Dir, fmt.Sprintf("nats-%d", i+1))}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		if err := c.writeConfig(n); err != nil {
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
	if err := c.waitMetaLeader(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// randomHex is a password of n random bytes. nats-server parses an
// environment variable's value as a configuration value: one starting with
// a digit is read as a number and fails, hence the letter in front.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return "pw" + hex.EncodeToString(b)
}

// writeConfig writes the shipped file next to the node's own, which
// includes it and then overrides the per-machine settings (a later key
// replaces an earlier one in nats-server's configuration).
func (c *Cluster) writeConfig(n *Node) error {
	if err := os.MkdirAll(filepath.Join(n.dir, "store"), 0o750); err != nil {
		return fmt.Errorf("natscluster: %w", err)
	}
	if err := os.WriteFile(filepath.Join(n.dir, "nats-server.conf"), natsdeploy.ClusterConf, 0o640); err != nil {
		return fmt.Errorf("natscluster: %w", err)
	}
	var routes []string
	for _, o := range c.Nodes {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", o.RoutePort))
	}
	conf := fmt.Sprintf(`# Written by internal/testfix/natscluster: the shipped file, then what
# differs for a node on one machine.
include "nats-server.conf"
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
jetstream {
  store_dir: %q
  max_memory_store: 64MB
  max_file_store: 4GB
}
cluster {
  name: keymeter
  listen: 127.0.0.1:%d
  routes: [ %s ]
}
`, n.ClientPort, n.Mon, filepath.Join(n.dir, "store"), n.RoutePort, strings.Join(routes, ", "))
	n.conf = filepath.Join(n.dir, "node.conf")
	n.logFile = filepath.Join(n.dir, "nats.log")
	if err := os.WriteFile(n.conf, []byte(conf), 0o640); err != nil {
		return fmt.Errorf("natscluster: %w", err)
	}
	// The shipped file must stay valid for nats-server -t with this
	// environment: a config error would otherwise read as a start failure.
	cmd := exec.Command(c.cfg.Binary, "-t", "-c", n.conf)
	cmd.Env = append(c.env, "NATS_SERVER_NAME="+n.Name)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("natscluster: %s: nats-server -t -c %s: %v\n%s", n.Name, n.conf, err, out)
	}
	return nil
}

// launch starts n's process (not waiting for it to serve).
func (c *Cluster) launch(n *Node) error {
	cmd := exec.Command(c.cfg.Binary, "-c", n.conf)
	cmd.Env = append(c.env, "NATS_SERVER_NAME="+n.Name)
	if err := n.proc.Start(cmd, n.logFile); err != nil {
		return fmt.Errorf("natscluster: start %s: %w", n.Name, err)
	}
	return nil
}

// URLs are the client URLs of every node with keymeter's credentials, comma
// separated (the form of --nats-url).
func (c *Cluster) URLs() string {
	var us []string
	for _, n := range c.Nodes {
		us = append(us, fmt.Sprintf("nats://keymeter:%s@127.0.0.1:%d", c.Password, n.ClientPort))
	}
	return strings.Join(us, ",")
}

// Running reports whether node i's process is up.
func (c *Cluster) Running(i int) bool { return c.Nodes[i].proc.Running() }

// Kill sends SIGKILL to node i and waits for it to exit.
func (c *Cluster) Kill(i int) error {
	n := c.Nodes[i]
	if err := n.proc.Kill(); err != nil {
		return fmt.Errorf("natscluster: %s %w", n.Name, err)
	}
	return nil
}

// Restart starts node i again on its storage (after Kill) and waits until
// it serves with JetStream enabled (/healthz?js-enabled-only=true); its
// streams and consumers then catch up from the others (WaitCurrent).
func (c *Cluster) Restart(ctx context.Context, i int) error {
	if c.Running(i) {
		return fmt.Errorf("natscluster: %s is running", c.Nodes[i].Name)
	}
	if err := c.launch(c.Nodes[i]); err != nil {
		return err
	}
	return c.wait(ctx, i, "/healthz?js-enabled-only=true", c.cfg.StartTimeout)
}

// WaitReady waits until node i answers /healthz with 200 (JetStream up
// and every stream and consumer replica on it current), failing early
// when its process exits.
func (c *Cluster) WaitReady(ctx context.Context, i int) error {
	return c.wait(ctx, i, "/healthz", c.cfg.StartTimeout)
}

// WaitCurrent is WaitReady with its own limit.
func (c *Cluster) WaitCurrent(ctx context.Context, i int, limit time.Duration) error {
	return c.wait(ctx, i, "/healthz", limit)
}

func (c *Cluster) wait(ctx context.Context, i int, path string, limit time.Duration) error {
	n := c.Nodes[i]
	deadline := time.Now().Add(limit)
	url := fmt.Sprintf("http://127.0.0.1:%d%s", n.Mon, path)
	client := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		if !c.Running(i) {
			return fmt.Errorf("natscluster: %s exited during start-up\n%s", n.Name, c.LogTail(i, 30))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			b := make([]byte, 512)
			k, _ := resp.Body.Read(b)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b[:k])))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("natscluster: %s: %s not 200 within %s (last: %s)\n%s", n.Name, path, limit, last, c.LogTail(i, 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitMetaLeader waits until a JetStream request in the KEYMETER account
// is answered, which needs the cluster's meta leader.
func (c *Cluster) waitMetaLeader(ctx context.Context) error {
	deadline := time.Now().Add(c.cfg.StartTimeout)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		last = func() error {
			nc, err := nats.Connect(c.URLs(), nats.Timeout(2*time.Second))
			if err != nil {
				return err
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return err
			}
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err = js.AccountInfo(actx)
			return err
		}()
		if last == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("natscluster: no JetStream meta leader within %s: %v", c.cfg.StartTimeout, last)
}

// StreamLeader returns the index of the node leading stream (in the
// KEYMETER account) and its replicas as the leader reports them.
func (c *Cluster) StreamLeader(ctx context.Context, stream string) (int, *jetstream.ClusterInfo, error) {
	nc, err := nats.Connect(c.URLs(), nats.Timeout(2*time.Second))
	if err != nil {
		return -1, nil, fmt.Errorf("natscluster: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return -1, nil, err
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1, nil, fmt.Errorf("natscluster: stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return -1, nil, fmt.Errorf("natscluster: stream %s info: %w", stream, err)
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, info.Cluster, fmt.Errorf("natscluster: stream %s has no leader", stream)
	}
	for i, n := range c.Nodes {
		if n.Name == info.Cluster.Leader {
			return i, info.Cluster, nil
		}
	}
	return -1, info.Cluster, fmt.Errorf("natscluster: stream %s led by unknown server %q", stream, info.Cluster.Leader)
}

// LogTail is the last lines of node i's log.
func (c *Cluster) LogTail(i, lines int) string {
	b, _ := os.ReadFile(c.Nodes[i].logFile)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return c.Nodes[i].Name + " log:\n" + strings.Join(ls, "\n")
}

// Close kills every node (the storage stays in Dir).
func (c *Cluster) Close() {
	for i := range c.Nodes {
		if c.Running(i) {
			_ = c.Kill(i)
		}
	}
}

// Describe summarizes stream and its consumers (messages, leader, and per
// consumer pending, ack-pending and ack floor), for a failure's report.
func (c *Cluster) Describe(ctx context.Context, stream string) string {
	nc, err := nats.Connect(c.URLs(), nats.Timeout(2*time.Second))
	if err != nil {
		return err.Error()
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return err.Error()
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "stream %s: msgs=%d first=%d last=%d", stream, info.State.Msgs, info.State.FirstSeq, info.State.LastSeq)
	if info.Cluster != nil {
		fmt.Fprintf(&b, " leader=%s", info.Cluster.Leader)
	}
	ci := s.ListConsumers(ctx)
	for cinfo := range ci.Info() {
		fmt.Fprintf(&b, "\n  consumer %s: pending=%d ack_pending=%d redelivered=%d delivered=%d ack_floor=%d waiting=%d",
			cinfo.Name, cinfo.NumPending, cinfo.NumAckPending, cinfo.NumRedelivered, cinfo.Delivered.Stream, cinfo.AckFloor.Stream, cinfo.NumWaiting)
		if cinfo.Cluster != nil {
			fmt.Fprintf(&b, " leader=%s", cinfo.Cluster.Leader)
		}
	}
	return b.String()
}
