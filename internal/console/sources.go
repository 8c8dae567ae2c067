package console

import (
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/store"
)

// Sources are what the console reads beyond the REST API: stored events
// for backtests and key profiles, the bus for the live overview. Each is
// optional; a page that needs a missing one says so.
type Sources struct {
	// Store holds the events a backtest replays and a key's profile is
	// computed from.
	Store *store.DB
	// Bus feeds the live overview (a tail of the events with a consumer
	// group of its own, started while someone watches) and consumer lag.
	Bus bus.Bus
	// Rules returns the rule set the detector has loaded (for backtesting
	// a loaded rule); nil or returning nil: only pasted or uploaded files.
	Rules func() *detect.RuleSet
	// KeyCounts, if set, counts the keys by status and lists their
	// projects in one pass over the key table (the overview and usage pages
	// otherwise read every key through the API, page by page).
	KeyCounts func() (byStatus map[string]int, projects []string)
	// QuotaKeys, if set, gives a project's n keys with the most quota used
	// (ties by id) and its keys by quota state, in one pass over the table.
	QuotaKeys func(project string, n int) (top []string, states map[string]int)
	// LagGroups are the consumer groups whose lag per partition the live
	// overview shows (default: aggregator and detector).
	LagGroups []string
	// Done, when closed, ends every live stream: the server is shutting
	// down and must not wait for browsers to hang up.
	Done <-chan struct{}
}
