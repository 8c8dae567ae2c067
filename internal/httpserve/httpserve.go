// Package httpserve is what every role's HTTP listener shares: bind at
// start (so a bad address fails before anything runs), serve until the
// context ends and shut down gracefully, the admin endpoints (/metrics,
// /healthz, /readyz), and request metrics.
package httpserve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry is a Prometheus registry with the Go and process collectors:
// the one registry of a process, passed to every role it runs.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Listen binds addr now; what names the setting in the error (--listen).
func Listen(addr, what string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen %s: %w", what, addr, err)
	}
	return ln, nil
}

// Serve runs h on ln until ctx ends, then shuts down gracefully (10 s at
// the most for requests in flight).
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Admin serves /metrics of reg, /healthz, and /readyz (ready reports
// readiness; nil means always ready).
func Admin(reg *prometheus.Registry, ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, `{"status":"ok"}`) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil && !ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, `{"status":"not ready"}`)
			return
		}
		fmt.Fprintln(w, `{"status":"ready"}`)
	})
	return mux
}

// Instrument counts and times the requests of h by method and status, as
// keymeter_<name>_requests_total and keymeter_<name>_request_seconds.
func Instrument(reg prometheus.Registerer, name string, h http.Handler) (http.Handler, error) {
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymeter_" + name + "_requests_total", Help: "HTTP requests by method and status code."}, []string{"method", "code"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keymeter_" + name + "_request_seconds", Help: "HTTP request latency.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"method"})
	for _, c := range []prometheus.Collector{reqs, dur} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics of %s: %w", name, err)
		}
	}
	return promhttp.InstrumentHandlerCounter(reqs, promhttp.InstrumentHandlerDuration(dur, h)), nil
}
