package loadgen

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/keymeter/keymeter/internal/evaluate"
	"github.com/keymeter/keymeter/internal/event"
)

// EvalConfig describes a labelled evaluation set: days of benign traffic
// with the hard negatives real APIs have, and attacks with labels.
type EvalConfig struct {
	// Start is the time of the first event; by default a minute of November
	// 2026 drawn from the seed (any weekday, any hour), so a pack cannot
	// count on the history starting at midnight or on a Monday.
	Start    time.Time
	Duration time.Duration // default 72h
	Seed     uint64
	// Scale multiplies the benign populations (default 1). The attacks and
	// every kind of benign population are present at any scale.
	Scale float64
	// AttackAfter: no attack starts before this (default 24h, or a third of
	// a shorter Duration), so profiles can learn first.
	AttackAfter time.Duration
	// Attacks is how many of each attack scenario (0: 1 or 2, drawn from the seed).
	Attacks int
	// Surge: a day when every key runs at several times its usual volume
	// (sets of 36 h or more): 0 on half the seeds, 1 always, -1 never.
	Surge int
}

// EvalScenarios are the attack scenarios of an evaluation set.
var EvalScenarios = []string{"anon-burst", "credential-stuffing", "credential-stuffing-asn", "geo-shift",
	"leaked-key-botnet", "low-and-slow", "quota-spike", "revoked-key-tried", "load-test"}

// KeyInfo describes a key of the evaluation set.
type KeyInfo struct {
	KeyID   string `json:"key_id"`
	Project string `json:"project"`
	Kind    string `json:"kind"`    // server, browser, mobile, batch (as a key's kind at creation)
	Persona string `json:"persona"` // what the generator made it do
	Status  string `json:"status"`  // active or revoked
}

// EvalSet is what GenerateEval produced besides the events.
type EvalSet struct {
	Start  time.Time // of the first event
	End    time.Time
	Labels []evaluate.Label
	Keys   []KeyInfo
	Events int64
	Benign int64 // events not inside a label's group and window
	// Surge describes the day every key runs at several times its usual
	// volume, if the seed drew one.
	Surge string
}

func (c *EvalConfig) fill() error {
	if c.Start.IsZero() {
		// From a stream of its own: the populations of a seed do not depend on it.
		r := rand.New(rand.NewPCG(c.Seed^0x5354415254, 1))
		c.Start = time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Add(time.Duration(r.IntN(28*24*60)) * time.Minute)
	}
	c.Start = c.Start.UTC()
	if c.Duration == 0 {
		c.Duration = 72 * time.Hour
	}
	if c.Duration < 6*time.Hour || c.Duration > 31*24*time.Hour {
		return fmt.Errorf("loadgen: evaluation duration %s out of range [6h, 31 days]", c.Duration)
	}
	if c.Scale == 0 {
		c.Scale = 1
	}
	if c.Scale < 0.05 || c.Scale > 50 {
		return fmt.Errorf("loadgen: scale %g out of range [0.05, 50]", c.Scale)
	}
	if c.AttackAfter == 0 {
		c.AttackAfter = min(24*time.Hour, c.Duration/3)
	}
	if c.AttackAfter < 0 || c.AttackAfter > c.Duration-4*time.Hour {
		return fmt.Errorf("loadgen: attack-after %s leaves less than 4h of the %s for attacks", c.AttackAfter, c.Duration)
	}
	if c.Attacks < 0 || c.Attacks > 10 {
		return fmt.Errorf("loadgen: attacks per scenario %d out of range [0, 10]", c.Attacks)
	}
	return nil
}

type evalKey struct {
	KeyInfo
	ua     string
	routes []string
}

// actor is a source of events: rate is evaluated once a minute (events
// per second), one emits one event at t.
type actor struct {
	rate func(t time.Time) float64
	one  func(g *gen, t time.Time)
}

// attack is an actor with a label; its window is set from its events.
type attack struct {
	actor
	label       evaluate.Label
	key         string // victim key, if any
	prefix      [2]uint32
	first, last time.Time
	events      int64
}

type gen struct {
	rng    *rand.Rand
	w      *world
	buf    []event.Event
	cur    *attack // the attack emitting, if any
	start  time.Time
	verifs []string
}

func (g *gen) add(t time.Time, k *evalKey, a addr, o event.Outcome, route string) {
	e := event.Event{Time: t, ClientIP: a.String(), Country: g.w.countries[a.country].code, ASN: a.asn,
		Method: "GET", Host: "api.example.com", Route: route, Outcome: o,
		LatencyUS: uint32(300 + g.rng.IntN(15000)), VerifierID: g.verifs[g.rng.IntN(len(g.verifs))]}
	if k != nil {
		e.KeyID, e.Project, e.UserAgent = k.KeyID, k.Project, k.ua
		if route == "" {
			e.Route = k.routes[g.rng.IntN(len(k.routes))]
		}
	}
	if e.Route == "" {
		e.Route = "/v1/status"
	}
	if e.UserAgent == "" {
		e.UserAgent = agents[g.rng.IntN(len(agents))]
	}
	if g.rng.IntN(5) == 0 {
		e.Method = "POST"
		e.BytesIn = uint64(100 + g.rng.IntN(4000))
	}
	switch o {
	case event.OutcomeValid:
		e.Status, e.CostUnits, e.BytesOut = 200, 1, uint64(200+g.rng.IntN(20000))
	case event.OutcomeRateLimited, event.OutcomeQuotaExceeded, event.OutcomeThrottled:
		e.Status = 429
	case event.OutcomeBlockedIP, event.OutcomeIPDenied, event.OutcomeScopeDenied:
		e.Status = 403
	default:
		e.Status = 401
	}
	if g.cur != nil {
		g.cur.events++
		if g.cur.first.IsZero() || t.Before(g.cur.first) {
			g.cur.first = t
		}
		if t.After(g.cur.last) {
			g.cur.last = t
		}
	}
	g.buf = append(g.buf, e)
}

// poisson draws a Poisson count (normal approximation for large means).
func poisson(rng *rand.Rand, lam float64) int {
	if lam <= 0 {
		return 0
	}
	if lam > 50 {
		n := int(math.Round(lam + rng.NormFloat64()*math.Sqrt(lam)))
		return max(n, 0)
	}
	l, k, p := math.Exp(-lam), 0, 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

// diurnal is the daily shape of human traffic at local time: lowest near
// 04:00, highest mid-afternoon; amp 0 is flat.
func diurnal(t time.Time, offset int, amp float64) float64 {
	h := float64(t.Unix()%86400)/3600 + float64(offset)
	f := 0.5 - 0.5*math.Cos(2*math.Pi*(h-4)/24)
	return (1 - amp) + amp*(0.1+0.9*f)
}

func weekend(t time.Time, offset int) bool {
	d := t.Add(time.Duration(offset) * time.Hour).Weekday()
	return d == time.Saturday || d == time.Sunday
}

func localHour(t time.Time, offset int) float64 {
	return math.Mod(float64(t.Unix()%86400)/3600+float64(offset)+48, 24)
}

func uniform(rng *rand.Rand, lo, hi float64) float64 { return lo + rng.Float64()*(hi-lo) }

func between(rng *rand.Rand, lo, hi int) int { return lo + rng.IntN(hi-lo+1) }

const idChars = "0123456789abcdefghijklmnopqrstuvwxyz"

func randID(rng *rand.Rand, prefix string, n int) string {
	b := []byte(prefix)
	for range n {
		b = append(b, idChars[rng.IntN(len(idChars))])
	}
	return string(b)
}

var (
	mobileRoutes  = []string{"/v1/feed", "/v1/config", "/v1/events", "/v1/profile", "/v1/messages", "/v1/search"}
	browserRoutes = []string{"/v1/search", "/v1/items", "/v1/items/42", "/v1/autocomplete", "/v1/maps/tiles"}
	serverRoutes  = []string{"/v1/items", "/v1/orders", "/v1/orders/991", "/v1/customers", "/v1/invoices", "/v1/search"}
	batchRoutes   = []string{"/v1/export", "/v1/items", "/v1/orders", "/v1/reports"}
	mobileAgents  = []string{"%s/4.%d.0 (iPhone; iOS 17.%d)", "%s/4.%d.1 (Android 14; SM-G99%d)", "okhttp/4.12.0 %s/4.%d.%d"}
	appNames      = []string{"Trailmix", "Koala", "Pocketly", "Zesty", "Orbit", "Nimbus", "Tandem", "Fennec", "Quill", "Lumen"}
	projectNames  = []string{"storefront", "payments", "mobile-app", "partner-api", "analytics", "maps", "messaging", "search", "ledger", "iot-fleet"}
)

// GenerateEval writes the evaluation set's events to emit in time order and
// returns the labels and keys. The same config gives the same set; another
// seed gives other populations, countries, rates, timing and attacks.
func GenerateEval(cfg EvalConfig, emit func(*event.Event) error) (*EvalSet, error) {
	ev, err := NewEval(cfg)
	if err != nil {
		return nil, err
	}
	if err := ev.Run(emit); err != nil {
		return nil, err
	}
	return &ev.EvalSet, nil
}

// Eval is a planned evaluation set: its keys and labels are known before
// its events are generated (Run).
type Eval struct {
	EvalSet
	cfg     EvalConfig
	g       *gen
	actors  []*actor
	attacks []*attack
}

// NewEval plans an evaluation set: populations, keys, attacks and labels.
func NewEval(cfg EvalConfig) (*Eval, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5851f42d4c957f2d))
	w := theWorld
	g := &gen{rng: rng, w: w, start: cfg.Start}
	for range between(rng, 3, 8) {
		g.verifs = append(g.verifs, randID(rng, "edge-", 6))
	}
	set := &EvalSet{Start: cfg.Start, End: cfg.Start.Add(cfg.Duration)}
	var projects []string
	for _, i := range rng.Perm(len(projectNames))[:between(rng, 4, 9)] {
		projects = append(projects, "proj_"+projectNames[i])
	}
	var keys []*evalKey
	newKey := func(kind, persona string, routes []string, ua string) *evalKey {
		k := &evalKey{KeyInfo: KeyInfo{KeyID: randID(rng, "key_", 24), Project: projects[rng.IntN(len(projects))], Kind: kind, Persona: persona, Status: "active"},
			routes: routes, ua: ua}
		keys = append(keys, k)
		return k
	}
	pop := func(lo, hi, floor int) int {
		return max(floor, int(math.Round(float64(between(rng, lo, hi))*cfg.Scale)))
	}
	var actors []*actor
	var servers, regionals []*serverKey

	// Global mobile-SDK keys: 8-25 countries, carriers behind CGNAT.
	for range pop(6, 20, 2) {
		app := appNames[rng.IntN(len(appNames))]
		ua := fmt.Sprintf(mobileAgents[rng.IntN(len(mobileAgents))], app, rng.IntN(20), rng.IntN(9))
		k := newKey("mobile", "mobile-sdk", mobileRoutes, ua)
		cs := w.pickCountries(rng, between(rng, 8, 25), nil)
		ws := zipf(rng, len(cs))
		peak := uniform(rng, 0.4, 3)
		mobileShare := uniform(rng, 0.5, 0.9)
		actors = append(actors, &actor{
			rate: func(t time.Time) float64 {
				s := 0.0
				for i, ci := range cs {
					s += ws[i] * diurnal(t, w.countries[ci].offset, 0.8)
				}
				return peak * s
			},
			one: func(g *gen, t time.Time) {
				ci := cs[pickWeighted(g.rng, ws)]
				kind := kindMobile
				if g.rng.Float64() > mobileShare {
					kind = kindISP
				}
				o := event.OutcomeValid
				if g.rng.IntN(800) == 0 {
					o = event.OutcomeRateLimited
				}
				g.add(t, k, g.w.pick(g.rng, g.w.blockOf(g.rng, kind, ci)), o, "")
			},
		})
	}
	// An SDK key retired from the app: old installs still send it (revoked).
	if rng.IntN(10) < 7 {
		k := newKey("mobile", "retired-sdk-key", mobileRoutes, fmt.Sprintf("%s/3.%d.0 (Android 11)", appNames[rng.IntN(len(appNames))], rng.IntN(9)))
		k.Status = "revoked"
		cs := w.pickCountries(rng, between(rng, 3, 10), nil)
		r := uniform(rng, 0.002, 0.03)
		actors = append(actors, &actor{rate: func(time.Time) float64 { return r }, one: func(g *gen, t time.Time) {
			g.add(t, k, g.w.pick(g.rng, g.w.blockOf(g.rng, kindMobile, cs[g.rng.IntN(len(cs))])), event.OutcomeRevoked, "")
		}})
	}
	// Browser (publishable) keys: many countries, half of them behind a CDN.
	cdnASNs := uniqASNs(w, kindCDN)
	for range pop(4, 12, 2) {
		k := newKey("browser", "browser", browserRoutes, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36")
		cs := w.pickCountries(rng, between(rng, 3, 30), nil)
		ws := zipf(rng, len(cs))
		peak := uniform(rng, 0.2, 2.5)
		viaCDN := rng.IntN(2) == 0
		if viaCDN {
			k.Persona = "browser-cdn"
		}
		cdn := cdnASNs[rng.IntN(len(cdnASNs))]
		edges := make([]int, len(cs))
		for i, ci := range cs {
			edges[i] = nearestEdge(w, ci, cdn)
		}
		actors = append(actors, &actor{
			rate: func(t time.Time) float64 {
				s := 0.0
				for i, ci := range cs {
					s += ws[i] * diurnal(t, w.countries[ci].offset, 0.7)
				}
				return peak * s
			},
			one: func(g *gen, t time.Time) {
				i := pickWeighted(g.rng, ws)
				ci := cs[i]
				if viaCDN {
					g.add(t, k, g.w.pick(g.rng, edges[i]), event.OutcomeValid, "")
					return
				}
				kind := kindISP
				if g.rng.IntN(3) == 0 {
					kind = kindMobile
				}
				g.add(t, k, g.w.pick(g.rng, g.w.blockOf(g.rng, kind, ci)), event.OutcomeValid, "")
			},
		})
	}
	// Regional web keys: users in 1-3 countries.
	for range pop(4, 12, 2) {
		k := newKey("browser", "regional-web", browserRoutes, "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15")
		cs := w.pickCountries(rng, between(rng, 1, 3), nil)
		ws := zipf(rng, len(cs))
		peak := uniform(rng, 0.1, 1.5)
		sk := &serverKey{k: k, countries: cs}
		sk.rate = func(t time.Time) float64 {
			s := 0.0
			for i, ci := range cs {
				s += ws[i] * diurnal(t, w.countries[ci].offset, 0.85)
			}
			return peak * s
		}
		regionals = append(regionals, sk)
		actors = append(actors, &actor{rate: sk.rate, one: func(g *gen, t time.Time) {
			ci := cs[pickWeighted(g.rng, ws)]
			kind := kindISP
			if g.rng.IntN(4) == 0 {
				kind = kindMobile
			}
			g.add(t, k, g.w.pick(g.rng, g.w.blockOf(g.rng, kind, ci)), event.OutcomeValid, "")
		}})
	}
	// Server keys: a few fixed addresses in a cloud region or an office,
	// diurnal and weekly seasonality of the customer's business.
	clouds := w.countriesWith(kindCloud)
	for range pop(15, 40, 10) {
		k := newKey("server", "server", serverRoutes, agents[rng.IntN(len(agents))])
		var ips []addr
		var home int
		if rng.IntN(4) == 0 {
			home = w.pickCountries(rng, 1, nil)[0]
			b := w.blockOf(rng, kindBusiness, home)
			for range between(rng, 1, 2) {
				ips = append(ips, w.pick(rng, b))
			}
		} else {
			home = clouds[rng.IntN(len(clouds))]
			b := w.blockOf(rng, kindCloud, home)
			for range between(rng, 1, 3) {
				ips = append(ips, w.pick(rng, b))
			}
		}
		off := w.countries[home].offset + between(rng, -2, 2)
		peak := math.Exp(uniform(rng, math.Log(0.03), math.Log(2)))
		amp := uniform(rng, 0.2, 1)
		we := uniform(rng, 0.25, 1)
		sk := &serverKey{k: k, ips: ips, countries: []int{home}}
		sk.rate = func(t time.Time) float64 {
			r := peak * diurnal(t, off, amp)
			if weekend(t, off) {
				r *= we
			}
			return r
		}
		servers = append(servers, sk)
		actors = append(actors, &actor{rate: sk.rate, one: func(g *gen, t time.Time) {
			o := event.OutcomeValid
			if g.rng.IntN(2000) == 0 {
				o = event.OutcomeScopeDenied
			}
			g.add(t, k, ips[g.rng.IntN(len(ips))], o, "")
		}})
	}
	// Nightly batch jobs: quiet all day, a burst 20-40x the usual rate at the
	// same time each day, from cloud addresses.
	for range pop(3, 8, 2) {
		k := newKey("batch", "nightly-batch", batchRoutes, "batch-exporter/2."+fmt.Sprint(rng.IntN(9)))
		ci := clouds[rng.IntN(len(clouds))]
		b := w.blockOf(rng, kindCloud, ci)
		ips := []addr{w.pick(rng, b), w.pick(rng, b)}
		base := math.Exp(uniform(rng, math.Log(0.01), math.Log(0.15)))
		factor := uniform(rng, 20, 40)
		at := time.Duration(rng.IntN(24*60)) * time.Minute
		dur := time.Duration(between(rng, 10, 35)) * time.Minute
		jitter := make([]time.Duration, int(cfg.Duration/(24*time.Hour))+2)
		for i := range jitter {
			jitter[i] = time.Duration(rng.IntN(7)-3) * time.Minute
		}
		actors = append(actors, &actor{
			rate: func(t time.Time) float64 {
				d := int(t.Sub(cfg.Start) / (24 * time.Hour))
				for _, day := range []int{d - 1, d} { // a burst may run past midnight
					if day < 0 || day >= len(jitter) {
						continue
					}
					s := cfg.Start.Add(time.Duration(day)*24*time.Hour + at + jitter[day])
					if !t.Before(s) && t.Before(s.Add(dur)) {
						return base * factor
					}
				}
				return base
			},
			one: func(g *gen, t time.Time) { g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeValid, "") },
		})
	}
	// CI runners: jobs in working hours from fresh addresses of a cloud.
	for range pop(3, 8, 2) {
		k := newKey("server", "ci-runner", serverRoutes, "ci-test-suite/1.0 (+runner)")
		team := w.pickCountries(rng, 1, nil)[0]
		off := w.countries[team].offset
		var blocks []int
		for range between(rng, 1, 3) {
			blocks = append(blocks, w.blockOf(rng, kindCloud, clouds[rng.IntN(len(clouds))]))
		}
		jobsPerHour := uniform(rng, 1, 8)
		jobRate := uniform(rng, 0.3, 4)
		type job struct {
			end time.Time
			ip  addr
		}
		var active []job
		actors = append(actors, &actor{
			rate: func(t time.Time) float64 {
				kept := active[:0]
				for _, j := range active {
					if t.Before(j.end) {
						kept = append(kept, j)
					}
				}
				active = kept
				h := localHour(t, off)
				if !weekend(t, off) && h >= 8 && h < 20 {
					for range poisson(rng, jobsPerHour/60) {
						active = append(active, job{end: t.Add(time.Duration(between(rng, 2, 12)) * time.Minute), ip: w.pick(rng, blocks[rng.IntN(len(blocks))])})
					}
				}
				return jobRate * float64(len(active))
			},
			one: func(g *gen, t time.Time) {
				if len(active) > 0 {
					g.add(t, k, active[g.rng.IntN(len(active))].ip, event.OutcomeValid, "")
				}
			},
		})
	}
	// Uptime probes: every 30-60 s from 8-20 regions.
	for range pop(1, 3, 1) {
		k := newKey("server", "uptime-probe", []string{"/v1/health", "/v1/status"}, "UptimeProbe/3.1 (+https://probe.example.net)")
		var ips []addr
		for _, ci := range w.pickCountries(rng, between(rng, 8, 20), nil) {
			b := w.blockOf(rng, kindCloud, ci)
			if b < 0 {
				b = w.blockOf(rng, kindBusiness, ci)
			}
			ips = append(ips, w.pick(rng, b))
		}
		every := float64(between(rng, 30, 60))
		actors = append(actors, &actor{rate: func(time.Time) float64 { return float64(len(ips)) / every },
			one: func(g *gen, t time.Time) { g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeValid, "") }})
	}
	// Travelling developers: home in working hours, then a trip to one new
	// country (hotel and carrier networks) and back.
	for range pop(3, 8, 2) {
		k := newKey("server", "travelling-developer", serverRoutes, "curl/8.5.0")
		home := w.pickCountries(rng, 1, nil)[0]
		homeIPs := []addr{w.pick(rng, w.blockOf(rng, kindISP, home)), w.pick(rng, w.blockOf(rng, kindBusiness, home))}
		dest := w.pickCountries(rng, 1, map[int]bool{home: true})[0]
		var tripIPs []addr
		for range between(rng, 1, 4) {
			kind := kindISP
			if rng.IntN(2) == 0 {
				kind = kindMobile
			}
			tripIPs = append(tripIPs, w.pick(rng, w.blockOf(rng, kind, dest)))
		}
		tripStart := cfg.Start.Add(time.Duration(uniform(rng, 0.15, 0.75) * float64(cfg.Duration)))
		tripEnd := tripStart.Add(time.Duration(uniform(rng, 12, 60) * float64(time.Hour)))
		peak := uniform(rng, 0.01, 0.12)
		// Getting there and back takes hours without the key in use (drawn
		// from a stream of their own, so the other populations of a seed
		// stay as they were).
		frng := rand.New(rand.NewPCG(cfg.Seed^0x7472617665, uint64(len(keys))))
		outStart := tripStart.Add(-time.Duration(uniform(frng, 2, 14) * float64(time.Hour)))
		backEnd := tripEnd.Add(time.Duration(uniform(frng, 2, 14) * float64(time.Hour)))
		actors = append(actors, &actor{
			rate: func(t time.Time) float64 {
				if (!t.Before(outStart) && t.Before(tripStart)) || (!t.Before(tripEnd) && t.Before(backEnd)) {
					return 0 // travelling
				}
				off := w.countries[home].offset
				if !t.Before(tripStart) && t.Before(tripEnd) {
					off = w.countries[dest].offset
				}
				h := localHour(t, off)
				if h < 8 || h > 22 {
					return 0
				}
				return peak
			},
			one: func(g *gen, t time.Time) {
				if !t.Before(tripStart) && t.Before(tripEnd) {
					g.add(t, k, tripIPs[g.rng.IntN(len(tripIPs))], event.OutcomeValid, "")
					return
				}
				g.add(t, k, homeIPs[g.rng.IntN(len(homeIPs))], event.OutcomeValid, "")
			},
		})
	}
	// Corporate NAT: many keys behind one office address, a few mistyped or
	// expired keys, and anonymous traffic from the same address.
	for range pop(1, 3, 1) {
		ci := w.pickCountries(rng, 1, nil)[0]
		off := w.countries[ci].offset
		ip := w.pick(rng, w.blockOf(rng, kindBusiness, ci))
		var ks []*evalKey
		var peaks []float64
		for range between(rng, 8, 30) {
			ks = append(ks, newKey("server", "corporate-nat", serverRoutes, agents[rng.IntN(len(agents))]))
			peaks = append(peaks, uniform(rng, 0.003, 0.08))
		}
		total := 0.0
		for _, p := range peaks {
			total += p
		}
		anon := uniform(rng, 0.02, 0.4)
		actors = append(actors, &actor{
			rate: func(t time.Time) float64 {
				f := diurnal(t, off, 0.95)
				if weekend(t, off) {
					f *= 0.15
				}
				return (total + anon) * f
			},
			one: func(g *gen, t time.Time) {
				x := g.rng.Float64() * (total + anon)
				if x >= total {
					g.add(t, nil, ip, event.OutcomeMissing, "/v1/status")
					return
				}
				if g.rng.IntN(150) == 0 {
					o := event.OutcomeUnknown
					if g.rng.IntN(3) == 0 {
						o = event.OutcomeExpired
					}
					g.add(t, nil, ip, o, serverRoutes[g.rng.IntN(len(serverRoutes))])
					return
				}
				i := pickWeighted(g.rng, peaks)
				g.add(t, ks[i], ip, event.OutcomeValid, "")
			},
		})
	}
	// Anonymous background: public endpoints from everywhere, a few
	// malformed keys from broken clients.
	{
		r := uniform(rng, 0.5, 4) * cfg.Scale
		cs := w.pickCountries(rng, 30, nil)
		ws := zipf(rng, len(cs))
		actors = append(actors, &actor{
			rate: func(t time.Time) float64 { return r * diurnal(t, 0, 0.3) },
			one: func(g *gen, t time.Time) {
				ci := cs[pickWeighted(g.rng, ws)]
				kind := kindISP
				if g.rng.IntN(2) == 0 {
					kind = kindMobile
				}
				o := event.OutcomeMissing
				if g.rng.IntN(200) == 0 {
					o = event.OutcomeMalformed
				}
				g.add(t, nil, g.w.pick(g.rng, g.w.blockOf(g.rng, kind, ci)), o, "/v1/status")
			},
		})
	}

	attacks := buildAttacks(rng, w, cfg, servers, regionals, newKey)
	hard := planHard(cfg, w, newKey)
	actors = append(actors, hard.actors...)
	attacks = append(attacks, hard.attacks...)
	set.Surge = hard.surgeNote
	if hard.surge != nil {
		// Every benign population takes part, each key by its own share.
		srng := rand.New(rand.NewPCG(cfg.Seed^0x7375726765, 4))
		for _, a := range actors {
			rate, u := a.rate, uniform(srng, 0.3, 1)
			a.rate = func(t time.Time) float64 { return rate(t) * (1 + (hard.surge(t)-1)*u) }
		}
	}
	for _, k := range keys {
		set.Keys = append(set.Keys, k.KeyInfo)
	}
	for _, a := range attacks {
		if err := a.label.Check(); err != nil {
			return nil, fmt.Errorf("loadgen: label %s: %v", a.label.ID, err)
		}
		set.Labels = append(set.Labels, a.label)
	}
	slices.SortStableFunc(set.Labels, func(a, b evaluate.Label) int { return a.Start.Compare(b.Start) })
	return &Eval{EvalSet: *set, cfg: cfg, g: g, actors: actors, attacks: attacks}, nil
}

// Run generates the events, in time order, to emit. It runs once.
func (ev *Eval) Run(emit func(*event.Event) error) error {
	cfg, g, rng, actors, attacks := ev.cfg, ev.g, ev.g.rng, ev.actors, ev.attacks
	if g == nil {
		return fmt.Errorf("loadgen: evaluation set already generated")
	}
	ev.g = nil
	end := cfg.Start.Add(cfg.Duration)

	// Generate in 10-minute chunks, sorted, so memory stays bounded.
	var n int64
	const chunk = 10 * time.Minute
	for t0 := cfg.Start; t0.Before(end); t0 = t0.Add(chunk) {
		t1 := t0.Add(chunk)
		if t1.After(end) {
			t1 = end
		}
		g.buf = g.buf[:0]
		for m := t0; m.Before(t1); m = m.Add(time.Minute) {
			for _, a := range actors {
				for range poisson(rng, a.rate(m)*60) {
					a.one(g, m.Add(time.Duration(rng.Int64N(int64(time.Minute)))))
				}
			}
			for _, a := range attacks {
				g.cur = a
				for range poisson(rng, a.rate(m)*60) {
					a.one(g, m.Add(time.Duration(rng.Int64N(int64(time.Minute)))))
				}
				g.cur = nil
			}
		}
		slices.SortStableFunc(g.buf, func(a, b event.Event) int { return a.Time.Compare(b.Time) })
		for i := range g.buf {
			e := &g.buf[i]
			n++
			e.ID = fmt.Sprintf("ev-%d-%d", cfg.Seed, n)
			if err := emit(e); err != nil {
				return err
			}
		}
	}
	ev.Events = n
	var attackEvents int64
	for _, a := range attacks {
		attackEvents += a.events
	}
	ev.Benign = n - attackEvents
	return nil
}

// serverKey is a benign key an attack may pick as its victim.
type serverKey struct {
	k         *evalKey
	ips       []addr
	countries []int
	rate      func(time.Time) float64
	used      bool
}

func zipf(rng *rand.Rand, n int) []float64 {
	ws := make([]float64, n)
	s := uniform(rng, 0.5, 1.2)
	total := 0.0
	for i := range ws {
		ws[i] = 1 / math.Pow(float64(i+1), s)
		total += ws[i]
	}
	for i := range ws {
		ws[i] /= total
	}
	return ws
}

func pickWeighted(rng *rand.Rand, ws []float64) int {
	total := 0.0
	for _, w := range ws {
		total += w
	}
	x := rng.Float64() * total
	for i, w := range ws {
		if x -= w; x <= 0 {
			return i
		}
	}
	return len(ws) - 1
}

func uniqASNs(w *world, k netKind) []uint32 {
	var out []uint32
	for _, b := range w.blocks {
		if b.kind == k && !slices.Contains(out, b.asn) {
			out = append(out, b.asn)
		}
	}
	return out
}

// nearestEdge is the CDN block of asn closest to country ci in time zone.
func nearestEdge(w *world, ci int, asn uint32) int {
	best, bestD := -1, 100
	for i, b := range w.blocks {
		if b.kind != kindCDN || b.asn != asn {
			continue
		}
		d := w.countries[b.country].offset - w.countries[ci].offset
		if d < 0 {
			d = -d
		}
		if b.country == ci {
			d = -1
		}
		if d < bestD {
			best, bestD = i, d
		}
	}
	return best
}
