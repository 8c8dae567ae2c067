package chdb

import (
	"errors"
	"strings"
	"testing"
)

// A missing library is an error that says how to install it (never a panic).
func TestMissingLibrary(t *testing.T) {
	err := load("/nonexistent/libchdb.so")
	if !errors.Is(err, ErrLibraryMissing) || !strings.Contains(err.Error(), "scripts/chdb-lib.sh") || !strings.Contains(err.Error(), "CHDB_LIB_PATH") {
		t.Fatalf("err = %v", err)
	}
}
