package keys

import (
	"errors"
	"log/slog"

	"github.com/keymeter/keymeter/internal/bus"
)

// Option configures NewTable and NewService.
type Option func(*options) error

type options struct {
	log *slog.Logger
}

// WithLogger sets the logger (default: none, nothing is logged).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return errors.New("keys: WithLogger(nil)")
		}
		o.log = l
		return nil
	}
}

func applyOptions(opts []Option) (options, error) {
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

// NewStateService returns a key table keeping every key's full state and
// the lifecycle service writing through kl and reading it back from that
// table: what an admin process (API, detector, keymeter dev) runs. The
// caller runs table.Run(ctx, kl).
func NewStateService(kl bus.KeyLog, opts ...Option) (*Table, *Service, error) {
	table, err := NewTable(TableConfig{KeepState: true}, opts...)
	if err != nil {
		return nil, nil, err
	}
	svc, err := NewService(ServiceConfig{KeyLog: kl, Table: table}, opts...)
	if err != nil {
		return nil, nil, err
	}
	return table, svc, nil
}
