package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/keymeter/keymeter/internal/store"
)

// StoreRun is keymeter bench store: the insert benchmark once per rollup
// mode, each in a fresh database, or with QueryRows the query benchmark.
type StoreRun struct {
	// Open opens the store on database.
	Open     func(ctx context.Context, database string) (*store.DB, error)
	Backend  string // for the summary: chdb, clickhouse
	Database string // empty: a fresh one per run
	Rollups  string // preaggregated, views or both
	Events   int
	Batch    int
	Keys     int
	Span     time.Duration
	Queries  int
	Writers  int
	NoWarmup bool
	// QueryRows, when positive, runs RunStoreQuery on that many rows
	// instead of the insert benchmark.
	QueryRows int
}

// Modes are the rollup modes of r.Rollups, checked with the sizes.
func (r StoreRun) Modes() ([]store.RollupMode, error) {
	if r.Events <= 0 || r.Batch <= 0 || r.Keys <= 0 {
		return nil, fmt.Errorf("--events, --batch and --keys must be positive")
	}
	switch r.Rollups {
	case "both":
		return []store.RollupMode{store.RollupViews, store.RollupPreaggregated}, nil
	case string(store.RollupViews), string(store.RollupPreaggregated):
		return []store.RollupMode{store.RollupMode(r.Rollups)}, nil
	}
	return nil, fmt.Errorf("--rollups %q: accepted: preaggregated, views, both", r.Rollups)
}

// Run runs the benchmark.
func (r StoreRun) Run(ctx context.Context) error {
	modes, err := r.Modes()
	if err != nil {
		return err
	}
	if r.QueryRows > 0 {
		db := r.Database
		if db == "" {
			db = fmt.Sprintf("bench_query_%d", r.QueryRows)
		}
		s, err := r.Open(ctx, db)
		if err != nil {
			return err
		}
		defer s.Close(context.Background())
		return RunStoreQuery(ctx, StoreQueryConfig{DB: s, Backend: r.Backend, Rows: r.QueryRows, Keys: r.Keys, Span: r.Span, Queries: max(r.Queries, 200)})
	}
	for _, m := range modes {
		db := r.Database
		if db == "" { // a fresh database per run, so earlier runs do not count
			db = fmt.Sprintf("bench_%s_%d", m, time.Now().Unix())
		}
		s, err := r.Open(ctx, db)
		if err != nil {
			return err
		}
		err = RunStore(ctx, StoreConfig{DB: s, Backend: r.Backend, Events: r.Events, Batch: r.Batch, Keys: r.Keys, Rollups: m,
			Span: r.Span, Queries: r.Queries, Writers: r.Writers, NoWarmup: r.NoWarmup})
		s.Close(context.Background())
		if err != nil {
			return err
		}
	}
	return nil
}
