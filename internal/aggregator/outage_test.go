package aggregator_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/aggregator"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
)

// swapStore lets the test close the real store under a running aggregator
// and open it again, as an outage of the store would.
type swapStore struct {
	mu sync.RWMutex
	db *store.DB
}

func (s *swapStore) get() *store.DB { s.mu.RLock(); defer s.mu.RUnlock(); return s.db }

func (s *swapStore) InsertEvents(ctx context.Context, tok string, ev []event.Event) error {
	return s.get().InsertEvents(ctx, tok, ev)
}
func (s *swapStore) RecordIntent(ctx context.Context, in store.Intent) error {
	return s.get().RecordIntent(ctx, in)
}
func (s *swapStore) Intents(ctx context.Context, c string) ([]store.Intent, error) {
	return s.get().Intents(ctx, c)
}
func (s *swapStore) ClearIntent(ctx context.Context, c, p, tok string) error {
	return s.get().ClearIntent(ctx, c, p, tok)
}
func (s *swapStore) RecordIntents(ctx context.Context, ins []store.Intent) error {
	return s.get().RecordIntents(ctx, ins)
}
func (s *swapStore) ClearIntents(ctx context.Context, ins []store.Intent) error {
	return s.get().ClearIntents(ctx, ins)
}
func (s *swapStore) Committed(ctx context.Context, c string) (map[string]uint64, error) {
	return s.get().Committed(ctx, c)
}

func TestStoreOutageLosesNothing(t *testing.T) {
	b := newBus(t)
	database := fmt.Sprintf("outage_%d", seq.Add(1))
	open := func() *store.DB {
		db, err := chdb.Open(chdb.Config{DataDir: dataDir + "/chdb", Database: database})
		if err != nil {
			t.Fatalf("open chdb (CHDB_LIB_PATH=%q): %v", os.Getenv("CHDB_LIB_PATH"), err)
		}
		return db
	}
	db := open()
	if _, err := db.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	ss := &swapStore{db: db}
	agg, err := aggregator.New(aggregator.Config{FlushInterval: 100 * time.Millisecond, RetryBackoff: 50 * time.Millisecond}, b, ss)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agg.Run(ctx) }()
	produce(t, b, 10_000, 500, 5)
	waitCount(t, db, 10_000, 30*time.Second)

	// The store goes away; events keep coming and wait on the bus.
	_ = db.Close(context.Background())
	produce(t, b, 10_000, 500, 5)
	time.Sleep(2 * time.Second)
	if st := agg.Stats(); st.Events > 10_000 {
		t.Fatalf("aggregator claims %d events stored while the store was closed", st.Events)
	}
	db2 := open()
	defer db2.Close(context.Background())
	ss.mu.Lock()
	ss.db = db2
	ss.mu.Unlock()
	waitCount(t, db2, 20_000, 60*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
