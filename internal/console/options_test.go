package console

import (
	"log/slog"
	"net/http"
	"testing"
)

// TestWithLogger: the logger comes by option, as for api, keys and leaks;
// a nil one is refused rather than panicking later.
func TestWithLogger(t *testing.T) {
	cfg := Config{API: http.NotFoundHandler(), Role: func(string) string { return "" }}
	if _, err := New(cfg, WithLogger(nil)); err == nil {
		t.Error("WithLogger(nil) accepted")
	}
	l := slog.New(slog.DiscardHandler)
	c, err := New(cfg, WithLogger(l))
	if err != nil {
		t.Fatal(err)
	}
	if c.log.Handler() != l.Handler() {
		t.Error("the console does not log to the given logger")
	}
}
