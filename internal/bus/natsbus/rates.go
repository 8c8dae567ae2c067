package natsbus

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymeter/keymeter/internal/bus"
)

// headerSent carries a rate report's send time (Unix nanoseconds): core
// NATS messages have no timestamp of their own.
const headerSent = "Keymeter-Sent"

// A rate report is at most the server's max_payload less rateHeadroom (for
// the headers), and no more than rateMaxReport: a core NATS subscriber
// holds what it has not handled in a bounded buffer, better spent on many
// small messages than a few huge ones.
const (
	rateHeadroom  = 256
	rateMaxReport = 1 << 20
)

// RateTransport carries rate-limit reports on core NATS, subject
// <prefix>.ratelimits: no stream captures it, so a report reaches the
// verifiers connected at the time and is kept nowhere (a lost report only
// means one period of local limits).
func (b *Bus) RateTransport() bus.RateTransport {
	return natsRates{nc: b.nc, subject: b.cfg.Prefix + ".ratelimits"}
}

type natsRates struct {
	nc      *nats.Conn
	subject string
}

func (t natsRates) PublishRates(_ context.Context, r bus.RateReport) error {
	m := nats.NewMsg(t.subject)
	m.Data = r.Data
	if !r.Time.IsZero() {
		m.Header.Set(headerSent, strconv.FormatInt(r.Time.UnixNano(), 10))
	}
	if err := t.nc.PublishMsg(m); err != nil {
		return fmt.Errorf("natsbus: publish rate report: %w", err)
	}
	return nil
}

// MaxReportBytes follows the max_payload of the server connected to (read
// again on every call: a reconnect may land on a server with another).
func (t natsRates) MaxReportBytes() int {
	mp := t.nc.MaxPayload()
	switch {
	case mp <= 0: // not connected yet: NATS's default max_payload is 1 MiB
		return rateMaxReport / 2
	case mp <= 2*rateHeadroom:
		return int(mp / 2)
	}
	return int(min(mp-rateHeadroom, rateMaxReport))
}

// SubscribeRates subscribes and waits until the server has the
// subscription, so that every report published after it returns is seen.
func (t natsRates) SubscribeRates(ctx context.Context, fn func(bus.RateReport)) (func(), error) {
	var mu sync.Mutex // held while fn runs: stop waits for it
	stopped := false
	sub, err := t.nc.Subscribe(t.subject, func(m *nats.Msg) {
		r := bus.RateReport{Data: m.Data}
		if ns, err := strconv.ParseInt(m.Header.Get(headerSent), 10, 64); err == nil {
			r.Time = time.Unix(0, ns)
		}
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			fn(r)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("natsbus: subscribe to rate reports: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	if err := t.nc.FlushWithContext(ctx); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("natsbus: subscribe to rate reports: %w", err)
	}
	return func() {
		_ = sub.Unsubscribe()
		mu.Lock()
		stopped = true
		mu.Unlock()
	}, nil
}
