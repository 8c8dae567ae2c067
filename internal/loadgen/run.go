package loadgen

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// HTTPConfig says how requests reach the verifier.
type HTTPConfig struct {
	Target        string // base URL of the verifier, e.g. http://127.0.0.1:8080
	CountryHeader string // default CF-IPCountry
	Workers       int    // concurrent requests (default 32)
	Client        *http.Client
	// OnResponse, if set, sees every response status (demo counters).
	OnResponse func(r *Request, status int)
}

// Stats count what happened.
type Stats struct {
	Sent     uint64
	Errors   uint64
	ByStatus map[int]uint64
}

func (s Stats) String() string {
	codes := make([]int, 0, len(s.ByStatus))
	for c := range s.ByStatus {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var b strings.Builder
	fmt.Fprintf(&b, "sent=%d errors=%d", s.Sent, s.Errors)
	for _, c := range codes {
		fmt.Fprintf(&b, " status_%d=%d", c, s.ByStatus[c])
	}
	return b.String()
}

// SendHTTP sends reqs on their schedule until done or ctx ends. A request
// that falls behind schedule is sent at once, never skipped.
func SendHTTP(ctx context.Context, cfg HTTPConfig, reqs []Request) (Stats, error) {
	if cfg.Target == "" {
		return Stats{}, fmt.Errorf("loadgen: a target URL is required")
	}
	if cfg.CountryHeader == "" {
		cfg.CountryHeader = "CF-IPCountry"
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 32
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Workers}}
	}
	target := strings.TrimRight(cfg.Target, "/")
	var sent, errs atomic.Uint64
	var mu sync.Mutex
	byStatus := map[int]uint64{}
	work := make(chan *Request, cfg.Workers*2)
	var wg sync.WaitGroup
	for range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				req, err := newHTTPRequest(ctx, target, cfg.CountryHeader, r)
				if err != nil {
					errs.Add(1)
					continue
				}
				resp, err := client.Do(req)
				sent.Add(1)
				if err != nil {
					errs.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				byStatus[resp.StatusCode]++
				mu.Unlock()
				if cfg.OnResponse != nil {
					cfg.OnResponse(r, resp.StatusCode)
				}
			}
		}()
	}
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
loop:
	for i := range reqs {
		r := &reqs[i]
		if wait := time.Until(start.Add(r.At)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break loop
			}
		}
		select {
		case work <- r:
		case <-ctx.Done():
			break loop
		}
	}
	close(work)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	return Stats{Sent: sent.Load(), Errors: errs.Load(), ByStatus: byStatus}, nil
}

// newHTTPRequest is r as an HTTP request to target: its key or bad secret
// as a bearer token, its address in X-Forwarded-For, its country in
// countryHeader.
func newHTTPRequest(ctx context.Context, target, countryHeader string, r *Request) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, r.Method, target+r.Path, nil)
	if err != nil {
		return nil, err
	}
	switch {
	case r.Key != nil:
		req.Header.Set("Authorization", "Bearer "+r.Key.Secret)
	case r.BadSecret != "":
		req.Header.Set("Authorization", "Bearer "+r.BadSecret)
	}
	req.Header.Set("X-Forwarded-For", r.IP)
	req.Header.Set(countryHeader, r.Country)
	req.Header.Set("User-Agent", r.UserAgent)
	return req, nil
}

// Event turns a request into the usage event a verifier would emit for it,
// with the simplest outcome (valid for a key, malformed for a bad secret,
// missing for none).
func Event(r *Request, i int, seed uint64, start time.Time) event.Event {
	e := event.Event{
		ID: fmt.Sprintf("loadgen-%d-%d", seed, i), Time: start.Add(r.At).UTC(), ClientIP: r.IP, Country: r.Country,
		ASN: r.ASN, Method: r.Method, Host: "api.example.com", Route: r.Path, UserAgent: r.UserAgent,
		VerifierID: "loadgen", CostUnits: 1, LatencyUS: 900,
	}
	switch {
	case r.Key != nil:
		e.KeyID, e.Project, e.Outcome, e.Status, e.BytesOut = r.Key.ID, r.Key.Project, event.OutcomeValid, 200, 1800
	case r.BadSecret != "":
		e.Outcome, e.Status, e.CostUnits = event.OutcomeMalformed, 401, 0
	default:
		e.Outcome, e.Status, e.CostUnits = event.OutcomeMissing, 401, 0
	}
	return e
}

// WriteNDJSON writes reqs as usage events, one JSON object per line.
func WriteNDJSON(w io.Writer, reqs []Request, seed uint64, start time.Time) error {
	enc := json.NewEncoder(w)
	for i := range reqs {
		if err := enc.Encode(Event(&reqs[i], i, seed, start)); err != nil {
			return err
		}
	}
	return nil
}
