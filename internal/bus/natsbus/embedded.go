package natsbus

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// EmbeddedConfig configures an in-process nats-server with JetStream.
type EmbeddedConfig struct {
	// DataDir holds the JetStream file store (DataDir/jetstream).
	DataDir string
	// Host and Port to listen on. Port 0 with Listen=false serves only
	// in-process connections (fastest); Port -1 picks a free port.
	Host   string
	Port   int
	Listen bool
	// ServerName must stay the same across restarts on the same DataDir.
	ServerName string
}

// Validate checks the configuration.
func (c *EmbeddedConfig) Validate() error {
	if c.DataDir == "" {
		return errors.New("natsbus embedded: data-dir is required (the JetStream file store lives there)")
	}
	if c.Listen && (c.Port < -1 || c.Port > 65535) {
		return fmt.Errorf("natsbus embedded: port %d out of range (-1 for any free port, or 1-65535)", c.Port)
	}
	return nil
}

// Embedded is a running in-process nats-server.
type Embedded struct {
	srv *server.Server
	cfg EmbeddedConfig
}

// StartEmbedded starts nats-server in this process and waits until it
// accepts connections.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "keymeter-embedded"
	}
	opts := &server.Options{
		ServerName: cfg.ServerName,
		Host:       cfg.Host,
		Port:       cfg.Port,
		DontListen: !cfg.Listen,
		JetStream:  true,
		StoreDir:   filepath.Join(cfg.DataDir, "jetstream"),
		NoSigs:     true,
		NoLog:      true,
		// Event batches can be large; leave room above the 1 MB default.
		MaxPayload: 8 << 20,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsbus embedded: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("natsbus embedded: server not ready after 10s (store %s)", opts.StoreDir)
	}
	return &Embedded{srv: srv, cfg: cfg}, nil
}

// ClientURL is the nats:// URL to reach the server over TCP ("" when it
// does not listen).
func (e *Embedded) ClientURL() string {
	if !e.cfg.Listen {
		return ""
	}
	return e.srv.ClientURL()
}

// ConnectOption makes a nats.Connect use an in-process connection to this
// server when it does not listen on TCP.
func (e *Embedded) ConnectOption() nats.Option {
	if e.cfg.Listen {
		return func(*nats.Options) error { return nil }
	}
	return nats.InProcessServer(e.srv)
}

// URL to pass to Connect: the TCP URL, or a placeholder for in-process use.
func (e *Embedded) URL() string {
	if e.cfg.Listen {
		return e.srv.ClientURL()
	}
	return "nats://in-process"
}

// Shutdown stops the server and waits for it to finish.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}
