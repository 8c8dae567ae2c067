package chdb_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/keymeter/keymeter/internal/store"
	"github.com/keymeter/keymeter/internal/store/chdb"
	"github.com/keymeter/keymeter/internal/store/storetest"
)

var dataDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "keymeter-chdb-test-")
	if err != nil {
		panic(err)
	}
	dataDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

// open fails the test (never skips) when libchdb is missing: CI must have it.
func open(t testing.TB, database string) *store.DB {
	t.Helper()
	db, err := chdb.Open(chdb.Config{DataDir: dataDir, Database: database})
	if err != nil {
		t.Fatalf("open chdb (CHDB_LIB_PATH=%q): %v", os.Getenv("CHDB_LIB_PATH"), err)
	}
	return db
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, database string) store.Store { return open(t, database) })
}

func TestOtherDataDirInSameProcess(t *testing.T) {
	db := open(t, "other_dir")
	defer db.Close(context.Background())
	_, err := chdb.Open(chdb.Config{DataDir: filepath.Join(dataDir, "elsewhere")})
	if err == nil {
		t.Fatal("a second data directory in one process was accepted")
	}
}
