package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

// publishValid publishes a batch of n valid events on the bus, as a
// verifier does.
func publishValid(t *testing.T, e *env, n int, tag string) {
	t.Helper()
	b := event.Batch{ID: "live-" + tag, Producer: "test", Created: time.Now()}
	for i := range n {
		b.Events = append(b.Events, event.Event{ID: fmt.Sprintf("live-%s-%d", tag, i), Time: time.Now().UTC(), Project: "proj_live",
			KeyID: "key_live", Outcome: event.OutcomeValid, ClientIP: "192.0.2.9", Method: "GET", Route: "/", Status: 200})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := e.bus.Publisher().Publish(ctx, bus.Message{Key: "key_live", BatchID: b.ID, Source: "test", Data: event.AppendBatch(nil, &b)})
	if err != nil {
		t.Fatal(err)
	}
	<-ack.Done()
	if ack.Err() != nil {
		t.Fatal(ack.Err())
	}
}

type sse struct {
	event string
	data  string
}

// stream reads server-sent events into a channel until the body ends.
func stream(t *testing.T, c *http.Client, u string) (*http.Response, <-chan sse) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan sse, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var cur sse
		for sc.Scan() {
			l := sc.Text()
			switch {
			case strings.HasPrefix(l, "event: "):
				cur.event = l[7:]
			case strings.HasPrefix(l, "data: "):
				cur.data = l[6:]
			case l == "" && cur.event != "":
				ch <- cur
				cur = sse{}
			}
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return resp, ch
}

// TestLiveOverviewStream: the overview's event stream reports the events
// published on the bus by outcome, the events stored and the decisions of
// the last hour; it needs a session, is bounded in number, and ends when
// the server shuts down.
func TestLiveOverviewStream(t *testing.T) {
	e := setup(t)
	anon := client(t, nil)
	if resp, err := anon.Get(e.url + "/console/live"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stream without a session: %v %v", resp.StatusCode, err)
	}
	// An aggregator group that reads nothing: its lag grows with what is
	// published and the stream reports it per partition.
	agg, err := e.bus.NewConsumer(context.Background(), bus.ConsumerConfig{Group: "aggregator"})
	if err != nil {
		t.Fatal(err)
	}
	defer agg.Close(context.Background())
	c := client(t, nil)
	c.Timeout = 0 // a stream
	login(t, c, e.url, adminSecret, "").Body.Close()
	resp, ch := stream(t, c, e.url+"/console/live?live=1")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var sawSummary, sawRate, sawLag, sawStored bool
	deadline := time.After(60 * time.Second)
	published := 0
	for done := false; !done; {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("stream ended early")
			}
			switch m.event {
			case "summary":
				sawSummary = strings.Contains(m.data, `"decisions":`)
			case "stats":
				var s struct {
					Lag    map[string]map[string]uint64 `json:"lag"`
					Rate   map[string]float64           `json:"rate"`
					Stored *uint64                      `json:"stored"`
					Tail   string                       `json:"tail"`
				}
				if err := json.Unmarshal([]byte(m.data), &s); err != nil {
					t.Fatalf("stats %q: %v", m.data, err)
				}
				if s.Tail != "" {
					t.Fatalf("stats without the tail: %s", m.data)
				}
				// The stored count is refreshed every few ticks with a 2 s
				// bound: a first count slower than that on a loaded
				// machine leaves it out of the first snapshots only.
				if s.Stored != nil {
					sawStored = true
				}
				var lag uint64
				for _, n := range s.Lag["aggregator"] {
					lag += n
				}
				if s.Rate["valid"] > 0 {
					sawRate = true
				}
				if lag > 0 {
					sawLag = true
				}
				if sawRate && sawLag && sawStored {
					done = true
					break
				}
				// The tail starts at the end of the log: publish after it
				// reported once, and again while nothing shows.
				published++
				publishValid(t, e, 50, fmt.Sprint(published))
			}
		case <-deadline:
			t.Fatalf("within 60 s: rate shown %v, aggregator lag shown %v, stored count shown %v", sawRate, sawLag, sawStored)
		}
	}
	if !sawSummary {
		t.Fatal("no summary event")
	}
	// The number of streams is bounded per session (security test
	// 2026-11-27, finding 8: one session took all 32) and in all.
	const maxLiveStreamsPerSession, maxLiveStreams = 3, 32
	var extra []*http.Response
	defer func() {
		for _, r := range extra {
			r.Body.Close()
		}
	}()
	open := func(c *http.Client) *http.Response {
		t.Helper()
		r, err := c.Get(e.url + "/console/live?live=1")
		if err != nil {
			t.Fatal(err)
		}
		extra = append(extra, r)
		return r
	}
	for i := 1; i < maxLiveStreamsPerSession; i++ {
		if r := open(c); r.StatusCode != 200 {
			t.Fatalf("the session's stream %d: %d", i+1, r.StatusCode)
		}
	}
	r := open(c)
	if body, _ := io.ReadAll(r.Body); r.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), "this session has too many live streams") {
		t.Fatalf("the session's stream %d: %d %s, want 429", maxLiveStreamsPerSession+1, r.StatusCode, body)
	}
	streams, sessions := maxLiveStreamsPerSession, 1
	for last := 200; last != http.StatusServiceUnavailable; {
		if sessions > maxLiveStreams {
			t.Fatalf("%d streams in %d sessions and no 503", streams, sessions)
		}
		other := client(t, nil)
		other.Timeout = 0
		login(t, other, e.url, adminSecret, "").Body.Close()
		sessions++
		for range maxLiveStreamsPerSession {
			if last = open(other).StatusCode; last != 200 {
				break
			}
			streams++
		}
		if last == http.StatusTooManyRequests {
			t.Fatalf("a new session's stream refused as its session's")
		}
	}
	if streams != maxLiveStreams {
		t.Fatalf("503 after %d streams, want %d", streams, maxLiveStreams)
	}
	// Shutdown ends the stream with an "end" event.
	e.shutdown()
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("the stream closed without an end event")
			}
			if m.event == "end" {
				return
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the stream did not end at shutdown")
		}
	}
}

// TestLiveStreamOutlivesReadTimeout: a server's ReadTimeout (httpserve sets
// one minute) does not end a stream (net/http clears the read deadline once
// the request is read).
func TestLiveStreamOutlivesReadTimeout(t *testing.T) {
	e := setup(t)
	hs := httptest.NewUnstartedServer(e.handler)
	hs.Config.ReadTimeout = 500 * time.Millisecond
	hs.Start()
	t.Cleanup(hs.Close)
	c := client(t, nil)
	c.Timeout = 0
	login(t, c, hs.URL, adminSecret, "").Body.Close()
	_, ch := stream(t, c, hs.URL+"/console/live?live=1")
	end := time.After(2500 * time.Millisecond)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				t.Fatal("the stream ended within 2.5 s under a 0.5 s ReadTimeout")
			}
		case <-end:
			return
		}
	}
}
