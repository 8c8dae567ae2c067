package loadgen

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

var testKeys = []Key{{ID: "key_a", Project: "p", Secret: "km_live_a"}, {ID: "key_b", Project: "p", Secret: "km_live_b"}}

func TestSameSeedSameTraffic(t *testing.T) {
	cfg := Config{Scenarios: Scenarios, Rate: 50, Duration: 30 * time.Second, Seed: 7, Keys: testKeys, AttackEvery: 5 * time.Second}
	a, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Generate(cfg)
	var ba, bb bytes.Buffer
	_ = WriteNDJSON(&ba, a, 7, time.Unix(1764000000, 0))
	_ = WriteNDJSON(&bb, b, 7, time.Unix(1764000000, 0))
	if ba.String() != bb.String() || ba.Len() == 0 {
		t.Fatal("same seed gave different traffic")
	}
	cfg.Seed = 8
	c, _ := Generate(cfg)
	var bc bytes.Buffer
	_ = WriteNDJSON(&bc, c, 7, time.Unix(1764000000, 0))
	if bc.String() == ba.String() {
		t.Fatal("another seed gave the same traffic")
	}
	seen := map[string]int{}
	for _, r := range a {
		seen[r.Scenario]++
	}
	for _, s := range Scenarios {
		if seen[s] == 0 {
			t.Errorf("scenario %s produced nothing", s)
		}
	}
	// Every line is a valid event in the JSON schema.
	rd := event.NewNDJSONReader(&ba)
	n := 0
	for {
		if _, err := rd.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != len(a) {
		t.Fatalf("read %d events, wrote %d", n, len(a))
	}
}

func TestBounded(t *testing.T) {
	reqs, err := Generate(Config{Scenarios: []string{"normal", "anon-burst"}, Rate: 1000, Duration: time.Minute, MaxRequests: 500, Keys: testKeys})
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 500 {
		t.Fatalf("%d requests, want the bound 500", len(reqs))
	}
	if _, err := Generate(Config{Scenarios: []string{"ddos"}}); err == nil {
		t.Fatal("unknown scenario accepted")
	}
	if _, err := Generate(Config{Scenarios: []string{"geo-shift"}}); err == nil {
		t.Fatal("key scenario without keys accepted")
	}
}

func TestSendHTTPHeaders(t *testing.T) {
	var withKey, withCountry atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			withKey.Add(1)
		}
		if r.Header.Get("CF-IPCountry") != "" && r.Header.Get("X-Forwarded-For") != "" {
			withCountry.Add(1)
		}
	}))
	defer srv.Close()
	reqs, _ := Generate(Config{Scenarios: []string{"normal"}, Rate: 200, Duration: time.Second, Keys: testKeys})
	st, err := SendHTTP(context.Background(), HTTPConfig{Target: srv.URL}, reqs)
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent != uint64(len(reqs)) || st.ByStatus[200] != uint64(len(reqs)) || withKey.Load() != int64(len(reqs)) || withCountry.Load() != int64(len(reqs)) {
		t.Fatalf("stats %v, with key %d, with country %d, of %d", st, withKey.Load(), withCountry.Load(), len(reqs))
	}
}
