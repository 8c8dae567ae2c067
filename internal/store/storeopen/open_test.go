package storeopen

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenChdbUnderDataDir(t *testing.T) {
	if _, err := Open(context.Background(), Config{Backend: "sqlite"}); err == nil || !strings.Contains(err.Error(), "--store") {
		t.Fatalf("unknown backend: %v", err)
	}
	if os.Getenv("CHDB_LIB_PATH") == "" {
		t.Skip("CHDB_LIB_PATH not set (make test sets it)")
	}
	dir := t.TempDir()
	db, err := Open(context.Background(), Config{Backend: "chdb", DataDir: dir, Database: "storeopen_test"})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	if _, err := os.Stat(filepath.Join(dir, "clickhouse")); err != nil {
		t.Fatalf("the engine's data is not under <data-dir>/clickhouse: %v", err)
	}
}
