// Package loadgen generates API traffic for demos, tests and benchmarks:
// normal use of a set of keys plus attack scenarios that the starter rules
// detect. The same seed gives the same traffic. Traffic is either sent as
// HTTP requests to a verifier (client IP in X-Forwarded-For, country in a
// CDN header) or written as usage events in their JSON form (NDJSON) for
// `keymeter rules backtest`.
package loadgen

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Scenarios are the traffic shapes, in the order they are documented.
var Scenarios = []string{"normal", "anon-burst", "credential-stuffing", "geo-shift", "quota-spike", "leaked-key"}

// Key is a key the generator may use: its secret for HTTP, its id for events.
type Key struct {
	ID      string
	Project string
	Secret  string
}

// Request is one generated request.
type Request struct {
	At        time.Duration // offset from the start
	Scenario  string
	Key       *Key   // nil: anonymous or a bad key (see BadSecret)
	BadSecret string // a malformed or unknown key string, for credential stuffing
	IP        string
	Country   string
	ASN       uint32
	Method    string
	Path      string
	UserAgent string
}

// Config describes the traffic.
type Config struct {
	// Scenarios to mix; "normal" runs all the time, attacks take turns.
	Scenarios []string
	// Rate is the normal traffic in requests per second (default 200).
	Rate float64
	// Duration of the traffic (default 1m).
	Duration time.Duration
	// MaxRequests bounds the total (default Rate*Duration*3 + 10000).
	MaxRequests int
	// Seed makes the traffic reproducible.
	Seed uint64
	// Keys used by normal traffic and the key attacks; the first is the
	// victim of key attacks unless AttackKey is set.
	Keys []Key
	// AttackEvery starts an attack scenario this often (default 20s), the
	// first one after AttackAfter (default 5s).
	AttackEvery, AttackAfter time.Duration
}

// withDefaults is c with the defaults of the zero fields filled in.
func (c Config) withDefaults() Config {
	if len(c.Scenarios) == 0 {
		c.Scenarios = []string{"normal"}
	}
	if c.Rate == 0 {
		c.Rate = 200
	}
	if c.Duration == 0 {
		c.Duration = time.Minute
	}
	if c.MaxRequests == 0 {
		c.MaxRequests = int(c.Rate*c.Duration.Seconds())*3 + 10000
	}
	if c.AttackEvery == 0 {
		c.AttackEvery = 20 * time.Second
	}
	if c.AttackAfter == 0 {
		c.AttackAfter = 5 * time.Second
	}
	return c
}

// Validate reports every problem of the configuration (with its defaults);
// it changes nothing.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	for _, s := range c.Scenarios {
		if !slices.Contains(Scenarios, s) {
			errs = append(errs, fmt.Errorf("loadgen: scenario %q: accepted values are %s", s, strings.Join(Scenarios, ", ")))
		}
	}
	if c.Rate < 0 || c.Rate > 1e6 {
		errs = append(errs, fmt.Errorf("loadgen: rate %g out of range (0, 1000000]", c.Rate))
	}
	if c.Duration < 0 || c.Duration > 24*time.Hour {
		errs = append(errs, fmt.Errorf("loadgen: duration %s out of range (0, 24h]", c.Duration))
	}
	needKeys := false
	for _, s := range c.Scenarios {
		if s == "normal" || s == "geo-shift" || s == "quota-spike" || s == "leaked-key" {
			needKeys = true
		}
	}
	if needKeys && len(c.Keys) == 0 {
		errs = append(errs, fmt.Errorf("loadgen: scenarios %v need at least one key", c.Scenarios))
	}
	return errors.Join(errs...)
}

var (
	countries = []string{"US", "DE", "BR", "JP", "NG", "IN", "FR", "AU", "ZA", "KR"}
	routes    = []string{"/v1/items", "/v1/items/42", "/v1/orders", "/v1/search", "/v1/profile"}
	agents    = []string{"python-requests/2.32", "Go-http-client/1.1", "curl/8.5.0", "okhttp/4.12"}
)

// addAttack adds the requests of attack scenario s, the n-th attack, from
// start on, drawing from rng in a fixed order (the schedule is a pure
// function of the seed); k is the victim key (nil: none). It reports
// whether the attack used the victim (cfg.Keys[vi]).
func addAttack(s string, n int, start time.Duration, k *Key, vi int, rng *rand.Rand, home func(int) (string, string, uint32), add func(Request) bool) bool {
	switch s {
	case "anon-burst":
		// 1500 anonymous requests in 10s from one /24.
		net := fmt.Sprintf("203.0.%d", 113+n%10)
		for j := range 1500 {
			add(Request{At: start + time.Duration(j)*10*time.Second/1500, Scenario: s, IP: fmt.Sprintf("%s.%d", net, 1+rng.IntN(254)), Country: "RU", ASN: 64666, Path: "/v1/search"})
		}
	case "credential-stuffing":
		// 300 made-up keys from one address in 15s: malformed and unknown.
		ip := fmt.Sprintf("192.0.2.%d", 10+n%200)
		for j := range 300 {
			bad := fmt.Sprintf("km_live_%032d", rng.Uint64()) // bad checksum: malformed
			if j%2 == 0 {
				bad = fmt.Sprintf("guess-%d", rng.Uint64())
			}
			add(Request{At: start + time.Duration(j)*15*time.Second/300, Scenario: s, BadSecret: bad, IP: ip, Country: "VN", ASN: 64777, Path: "/v1/profile"})
		}
	case "geo-shift":
		// One key from six countries within 30s.
		if k == nil {
			return false
		}
		for j := range 60 {
			c := countries[3+j%6]
			add(Request{At: start + time.Duration(j)*30*time.Second/60, Scenario: s, Key: k, IP: fmt.Sprintf("100.%d.%d.%d", 64+j%6, rng.IntN(256), 1+rng.IntN(254)), Country: c, ASN: uint32(64800 + j%6)})
		}
		return true
	case "quota-spike":
		// One key at 40x its usual share for 20s.
		if k == nil {
			return false
		}
		ip, c, asn := home(vi)
		for j := range 2000 {
			add(Request{At: start + time.Duration(j)*20*time.Second/2000, Scenario: s, Key: k, IP: ip, Country: c, ASN: asn})
		}
		return true
	case "leaked-key":
		// One key from 150 addresses in 8 networks within 30s.
		if k == nil {
			return false
		}
		for j := range 300 {
			add(Request{At: start + time.Duration(j)*30*time.Second/300, Scenario: s, Key: k,
				IP: fmt.Sprintf("45.%d.%d.%d", 10+j%8, rng.IntN(256), 1+j%150), Country: "US", ASN: uint32(65000 + j%8)})
		}
		return true
	}
	return false
}

// Generate returns the whole request schedule, sorted by time. It is a pure
// function of the config: the same seed gives the same requests.
func Generate(cfg Config) ([]Request, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	var out []Request
	add := func(r Request) bool {
		if len(out) >= cfg.MaxRequests || r.At >= cfg.Duration {
			return false
		}
		if r.Method == "" {
			r.Method = "GET"
		}
		if r.Path == "" {
			r.Path = routes[rng.IntN(len(routes))]
		}
		if r.UserAgent == "" {
			r.UserAgent = agents[rng.IntN(len(agents))]
		}
		out = append(out, r)
		return true
	}
	// Normal traffic: each key from its own home network and country.
	home := func(i int) (string, string, uint32) {
		return fmt.Sprintf("198.51.%d.%d", 100+i%50, 10+i%200), countries[i%3], uint32(64500 + i%20)
	}
	if slices.Contains(cfg.Scenarios, "normal") && cfg.Rate > 0 {
		step := time.Duration(float64(time.Second) / cfg.Rate)
		for at := time.Duration(0); at < cfg.Duration; at += step {
			i := rng.IntN(len(cfg.Keys))
			ip, c, asn := home(i)
			if !add(Request{At: at, Scenario: "normal", Key: &cfg.Keys[i], IP: ip, Country: c, ASN: asn}) {
				break
			}
		}
	}
	var attacks []string
	for _, s := range cfg.Scenarios {
		if s != "normal" {
			attacks = append(attacks, s)
		}
	}
	victim := 0
	for n, start := 0, cfg.AttackAfter; len(attacks) > 0 && start < cfg.Duration; n, start = n+1, start+cfg.AttackEvery {
		s := attacks[n%len(attacks)]
		var k *Key
		vi := 0
		if len(cfg.Keys) > 0 {
			vi = victim % len(cfg.Keys)
			k = &cfg.Keys[vi]
		}
		if addAttack(s, n, start, k, vi, rng, home, add) {
			victim++
		}
	}
	slices.SortStableFunc(out, func(a, b Request) int { return int(a.At - b.At) })
	return out, nil
}
