package devstack

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/busopen"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
)

// NATSPort is the default port of keymeter dev's embedded NATS server.
const NATSPort = 4222

// OpenBus opens the bus of keymeter dev and says in one line (the note, for
// Config.BusNote) how other processes reach it. Without c.NATSURL the NATS
// bus starts an embedded server, owned by the bus, that requires the
// credentials in <dataDir>/nats.nk and listens on 127.0.0.1:port. When the
// port was not given on the command line (portGiven) and is taken (another
// nats-server, e.g. Debian's nats-server service on 4222, or a dev still
// stopping), dev serves in-process only and says so instead of failing; a
// port given with --nats-port must be free.
func OpenBus(ctx context.Context, c busopen.Config, dataDir string, port int, portGiven bool, log *slog.Logger) (bus.Bus, string, error) {
	embedded := c.Backend == "nats" && c.NATSURL == ""
	note := ""
	if embedded {
		c.NATSPort = port
		if port > 0 && !portGiven && !portFree(port) {
			c.NATSPort = 0
			note = fmt.Sprintf(" (127.0.0.1:%d is taken: --nats-port to listen elsewhere)", port)
		}
	}
	b, err := busopen.Open(ctx, c, dataDir, log)
	if err != nil {
		if embedded && c.NATSPort != 0 {
			return nil, "", fmt.Errorf("embedded NATS on 127.0.0.1:%d (change with --nats-port, 0 for in-process only): %w", c.NATSPort, err)
		}
		return nil, "", err
	}
	switch nb, _ := b.(*natsbus.Bus); {
	case nb == nil:
		return b, c.Backend + " (external)", nil
	case nb.Embedded() == nil:
		return b, "external server " + natsbus.Redact(c.NATSURL), nil
	case nb.Embedded().ClientURL() == "":
		return b, "in-process only" + note, nil
	default:
		return b, fmt.Sprintf("%s, credentials in %s (keymeter logs --follow --nats-creds %s)", nb.Embedded().ClientURL(),
			nb.Embedded().CredsFile(), nb.Embedded().CredsFile()), nil
	}
}

// portFree reports whether 127.0.0.1:port can be listened on now.
func portFree(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
