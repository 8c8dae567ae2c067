package backtest

import (
	"fmt"
	"time"
)

// ParseRange reads --from and --to (RFC 3339; empty: unbounded) into
// Config.From and Config.To, naming the flag of a bad value.
func ParseRange(from, to string) (time.Time, time.Time, error) {
	var f, t time.Time
	var err error
	if from != "" {
		if f, err = time.Parse(time.RFC3339Nano, from); err != nil {
			return f, t, fmt.Errorf("--from %q: want RFC 3339, e.g. 2026-03-01T00:00:00Z", from)
		}
	}
	if to != "" {
		if t, err = time.Parse(time.RFC3339Nano, to); err != nil {
			return f, t, fmt.Errorf("--to %q: want RFC 3339, e.g. 2026-03-02T00:00:00Z", to)
		}
	}
	return f, t, nil
}
