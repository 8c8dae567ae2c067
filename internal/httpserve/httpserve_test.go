package httpserve

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// Two roles in one process share one registry: metrics of the same name
// twice are an error at start, not a panic.
func TestInstrumentTwiceIsAnError(t *testing.T) {
	reg := NewRegistry()
	if _, err := Instrument(reg, "api", http.NotFoundHandler()); err != nil {
		t.Fatal(err)
	}
	if _, err := Instrument(reg, "api", http.NotFoundHandler()); err == nil {
		t.Fatal("the same metrics registered twice without an error")
	}
}

func TestServeAdminUntilCancelled(t *testing.T) {
	ln, err := Listen("127.0.0.1:0", "--admin-listen")
	if err != nil {
		t.Fatal(err)
	}
	var ready atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ln, Admin(NewRegistry(), func() bool { return ready.Load() }), slog.Default())
	}()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before ready: %d", code)
	}
	ready.Store(true)
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when ready: %d", code)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics: %d", code)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	again, err := Listen(ln.Addr().String(), "--admin-listen")
	if err != nil {
		t.Fatalf("the address is still taken after Serve returned: %v", err)
	}
	again.Close()
}
