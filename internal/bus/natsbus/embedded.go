package natsbus

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// EmbeddedConfig configures an in-process nats-server with JetStream.
type EmbeddedConfig struct {
	// DataDir holds the JetStream file store (DataDir/jetstream).
	DataDir string
	// Host and Port to listen on. Port 0 with Listen=false serves only
	// in-process connections (fastest); Port -1 picks a free port. Host
	// defaults to 127.0.0.1.
	Host   string
	Port   int
	Listen bool
	// ServerName must stay the same across restarts on the same DataDir.
	ServerName string
	// CredsFile holds the nkey seed of the one user the server accepts:
	// every client, in-process or over TCP, authenticates with it. It is
	// created (mode 0600) on first start and must not be readable by
	// others. Default DataDir/user.nk.
	CredsFile string
	// StartTimeout bounds start-up, which includes JetStream recovering
	// its store (long for a big one). Default 2m.
	StartTimeout time.Duration
	// MaxPayload is the largest message (headers included) the server
	// accepts. Default 8 MiB.
	MaxPayload int32
}

// Validate checks the configuration; it changes nothing.
func (c EmbeddedConfig) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("natsbus embedded: data-dir is required (the JetStream file store lives there)"))
	}
	if c.Listen && (c.Port < -1 || c.Port > 65535) {
		errs = append(errs, fmt.Errorf("natsbus embedded: port %d out of range (-1 for any free port, or 1-65535)", c.Port))
	}
	if c.StartTimeout < 0 {
		errs = append(errs, fmt.Errorf("natsbus embedded: start timeout %s is negative", c.StartTimeout))
	}
	if c.MaxPayload < 0 {
		errs = append(errs, fmt.Errorf("natsbus embedded: max payload %d is negative (0 for the default 8 MiB)", c.MaxPayload))
	}
	return errors.Join(errs...)
}

// withDefaults fills the zero fields with their defaults.
func (c EmbeddedConfig) withDefaults() EmbeddedConfig {
	if c.Host == "" {
		c.Host = "127.0.0.1"
	}
	if c.ServerName == "" {
		c.ServerName = "keymeter-embedded"
	}
	if c.CredsFile == "" {
		c.CredsFile = filepath.Join(c.DataDir, "user.nk")
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 2 * time.Minute
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = 8 << 20
	}
	return c
}

// Embedded is a running in-process nats-server.
type Embedded struct {
	srv  *server.Server
	cfg  EmbeddedConfig
	once sync.Once
}

// StartEmbedded starts nats-server in this process and waits until it
// accepts connections, or until it reports why it cannot (a port in use, a
// store it cannot open): that error is returned at once.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	return startEmbedded(cfg, slog.Default())
}

func startEmbedded(cfg EmbeddedConfig, log *slog.Logger) (*Embedded, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("natsbus embedded: %w", err)
	}
	user, err := loadOrCreateUser(cfg.CredsFile)
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName: cfg.ServerName,
		Host:       cfg.Host,
		Port:       cfg.Port,
		DontListen: !cfg.Listen,
		JetStream:  true,
		StoreDir:   filepath.Join(cfg.DataDir, "jetstream"),
		NoSigs:     true,
		// Only the holder of CredsFile's seed gets in, over TCP or not.
		Nkeys: []*server.NkeyUser{{Nkey: user}},
		// Event batches can be large; leave room above the 1 MB default.
		MaxPayload: cfg.MaxPayload,
	}
	if !cfg.Listen {
		opts.Port = 0
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsbus embedded: %w", err)
	}
	// Without a logger the server drops its errors: a port in use or a
	// store it cannot open would show only as "not ready" after a timeout.
	sl := &serverLog{log: log.With("component", "nats-server"), fatal: make(chan string, 1)}
	srv.SetLoggerV2(sl, false, false, false)
	go srv.Start()
	deadline := time.Now().Add(cfg.StartTimeout)
	for !srv.ReadyForConnections(50 * time.Millisecond) {
		select {
		case msg := <-sl.fatal:
			srv.Shutdown()
			srv.WaitForShutdown()
			return nil, fmt.Errorf("natsbus embedded: %s (store %s)", msg, opts.StoreDir)
		default:
		}
		if time.Now().After(deadline) {
			srv.Shutdown()
			srv.WaitForShutdown()
			return nil, fmt.Errorf("natsbus embedded: server not ready after %s (store %s)", cfg.StartTimeout, opts.StoreDir)
		}
	}
	return &Embedded{srv: srv, cfg: cfg}, nil
}

// loadOrCreateUser returns the public key of the nkey seed in path,
// creating the file with a new seed (crypto/rand) when it does not exist.
func loadOrCreateUser(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		kp, err := nkeys.CreateUser()
		if err != nil {
			f.Close()
			return "", fmt.Errorf("natsbus embedded: new nkey: %w", err)
		}
		seed, _ := kp.Seed()
		_, err = f.Write(append(seed, '\n'))
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return "", fmt.Errorf("natsbus embedded: write %s: %w", path, err)
		}
		pub, _ := kp.PublicKey()
		return pub, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("natsbus embedded: credentials: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("natsbus embedded: credentials: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("natsbus embedded: %s has mode %04o: others may read the bus credentials; chmod 600 it", path, perm)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("natsbus embedded: credentials: %w", err)
	}
	kp, err := nkeys.ParseDecoratedNKey(bytes.TrimSpace(raw))
	if err != nil {
		return "", fmt.Errorf("natsbus embedded: %s holds no nkey seed (delete it to have a new one made): %w", path, err)
	}
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return "", fmt.Errorf("natsbus embedded: %s: not a user nkey seed (delete it to have a new one made)", path)
	}
	return pub, nil
}

// serverLog passes the server's warnings and errors to slog and reports a
// fatal error, which stops the server's start, to startEmbedded.
type serverLog struct {
	log   *slog.Logger
	fatal chan string
}

func (l *serverLog) Noticef(string, ...any) {}
func (l *serverLog) Debugf(string, ...any)  {}
func (l *serverLog) Tracef(string, ...any)  {}
func (l *serverLog) Warnf(format string, v ...any) {
	l.log.Warn(fmt.Sprintf(format, v...))
}
func (l *serverLog) Errorf(format string, v ...any) {
	l.log.Error(fmt.Sprintf(format, v...))
}
func (l *serverLog) Fatalf(format string, v ...any) {
	select {
	case l.fatal <- fmt.Sprintf(format, v...):
	default:
	}
}

// ClientURL is the nats:// URL to reach the server over TCP ("" when it
// does not listen). Clients also need CredsFile.
func (e *Embedded) ClientURL() string {
	if !e.cfg.Listen {
		return ""
	}
	return e.srv.ClientURL()
}

// CredsFile is the file with the nkey seed clients authenticate with.
func (e *Embedded) CredsFile() string { return e.cfg.CredsFile }

// connectOptions make a nats.Connect authenticate to this server, over an
// in-process connection when it does not listen on TCP.
func (e *Embedded) connectOptions() ([]nats.Option, error) {
	auth, err := nats.NkeyOptionFromSeed(e.cfg.CredsFile)
	if err != nil {
		return nil, fmt.Errorf("natsbus embedded: credentials %s: %w", e.cfg.CredsFile, err)
	}
	if e.cfg.Listen {
		return []nats.Option{auth}, nil
	}
	return []nats.Option{auth, nats.InProcessServer(e.srv)}, nil
}

// URL to pass to Connect: the TCP URL, or a placeholder for in-process use.
func (e *Embedded) URL() string {
	if e.cfg.Listen {
		return e.srv.ClientURL()
	}
	return "nats://in-process"
}

// Shutdown stops the server and waits for it to finish. Calling it again
// does nothing.
func (e *Embedded) Shutdown() {
	e.once.Do(func() {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
	})
}
