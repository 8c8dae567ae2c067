package loadgen

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// The second round of benign populations, added in a red-team of the
// starter pack against traffic real API providers see and the first
// populations lacked: serverless functions at CDN and cloud PoPs (steady,
// or deployed mid-trace), corporate SASE egress, regional web keys with
// foreign visitors (tourists, consumer VPNs, satellite users), IPv6-heavy
// mobile apps (a new /64 and privacy address per device), region
// migrations, key rotation and brand-new busy keys, partner platforms
// calling with many customers' keys (some stale) from one cloud pool, a
// forgotten cron with a revoked key, a shared team key one of whose users
// travels, nightly batch jobs moved by a clock change or run twice, a
// labelled customer load test, and on some seeds a day when every key runs
// several times its usual volume (a Black Friday).
//
// They are planned from a stream of their own, after the first
// populations and the attacks, so those stay as they were for a seed.

// hardPlan is what planHard adds to a set.
type hardPlan struct {
	actors  []*actor
	attacks []*attack
	// surge multiplies every benign actor's rate (nil: no surge day).
	surge     func(t time.Time) float64
	surgeNote string
}

// blocksOfASN lists the blocks of one ASN.
func blocksOfASN(w *world, asn uint32) []int {
	var out []int
	for i, b := range w.blocks {
		if b.asn == asn {
			out = append(out, i)
		}
	}
	return out
}

// nearBlocks are the n blocks of bs closest in time zone to country ci
// (its own country first).
func nearBlocks(w *world, bs []int, ci, n int) []int {
	type cand struct{ b, d int }
	var cs []cand
	for _, b := range bs {
		d := w.countries[w.blocks[b].country].offset - w.countries[ci].offset
		if d < 0 {
			d = -d
		}
		if w.blocks[b].country == ci {
			d = -1
		}
		cs = append(cs, cand{b, d})
	}
	for i := range cs { // stable selection sort by distance
		for j := i + 1; j < len(cs); j++ {
			if cs[j].d < cs[i].d {
				cs[i], cs[j] = cs[j], cs[i]
			}
		}
	}
	var out []int
	for i := 0; i < len(cs) && i < n; i++ {
		out = append(out, cs[i].b)
	}
	return out
}

// ramp is 0 before t0, 1 after t1, linear between.
func ramp(t, t0, t1 time.Time) float64 {
	switch {
	case t.Before(t0):
		return 0
	case !t.Before(t1) || !t1.After(t0):
		return 1
	}
	return float64(t.Sub(t0)) / float64(t1.Sub(t0))
}

// hardGen plans the second-round populations: one method per population,
// called in a fixed order, so the random draws of a seed do not change.
type hardGen struct {
	rng                                   *rand.Rand
	w                                     *world
	cfg                                   EvalConfig
	plan                                  *hardPlan
	end, midLo, midHi                     time.Time
	newKey                                func(kind, persona string, routes []string, ua string) *evalKey
	clouds                                []int
	cloudASNs, cdnASNs, saseASNs, vpnASNs []uint32
	satASN                                uint32
}

// mid is a time for a mid-trace change: once profiles are mature, before
// the end.
func (h *hardGen) mid() time.Time {
	return h.midLo.Add(time.Duration(h.rng.Int64N(int64(h.midHi.Sub(h.midLo))))).Truncate(time.Minute)
}

// pop sizes a population by the set's scale (at least one).
func (h *hardGen) pop(lo, hi int) int {
	return max(1, int(math.Round(float64(between(h.rng, lo, hi))*h.cfg.Scale)))
}

func (h *hardGen) add(a *actor) { h.plan.actors = append(h.plan.actors, a) }

// cloudBlock is a block of cloud asn outside country not.
func (h *hardGen) cloudBlock(asn uint32, not int) int {
	bs := blocksOfASN(h.w, asn)
	for range 20 {
		if b := bs[h.rng.IntN(len(bs))]; h.w.blocks[b].country != not {
			return b
		}
	}
	return bs[0]
}

func planHard(cfg EvalConfig, w *world, newKey func(kind, persona string, routes []string, ua string) *evalKey) *hardPlan {
	h := &hardGen{rng: rand.New(rand.NewPCG(cfg.Seed^0x68617264, 3)), w: w, cfg: cfg, plan: &hardPlan{}, newKey: newKey}
	h.end = cfg.Start.Add(cfg.Duration)
	// Mid-trace changes happen once profiles are mature, before the end.
	// (In a set shorter than a day, somewhere in its middle third.)
	h.midLo, h.midHi = cfg.Start.Add(max(14*time.Hour, cfg.Duration/4)), h.end.Add(-3*time.Hour)
	if cfg.Duration < 20*time.Hour {
		h.midLo, h.midHi = cfg.Start.Add(cfg.Duration/3), h.end.Add(-cfg.Duration/3)
	}
	h.clouds = w.countriesWith(kindCloud)
	h.cloudASNs, h.cdnASNs = uniqASNs(w, kindCloud), uniqASNs(w, kindCDN)
	h.saseASNs, h.vpnASNs = uniqASNs(w, kindSASE), uniqASNs(w, kindVPN)
	h.satASN = uniqASNs(w, kindSatellite)[0]

	h.edgeFunctions()
	h.sase()
	h.visitors()
	h.ipv6Mobile()
	h.migrations()
	h.rotationAndNewKeys()
	h.partnerPlatform()
	h.staleCron()
	h.teamTraveller()
	h.movedBatch()
	h.loadTest()
	h.surgeDay()
	return h.plan
}

// Serverless / edge functions: a server key called from the PoPs of one
// CDN or cloud in 8-26 countries. Half are there from the start; the
// others move there from an origin region mid-trace, by canary (a few
// percent for hours, then a ramp, the origin still serving) or at once.
func (h *hardGen) edgeFunctions() {
	rng, w, newKey, mid, pop, add, cloudBlock, cloudASNs, cdnASNs := h.rng, h.w, h.newKey, h.mid, h.pop, h.add, h.cloudBlock, h.cloudASNs, h.cdnASNs
	for range pop(2, 5) {
		deploy := rng.IntN(2) == 0
		persona := "edge-functions"
		if deploy {
			persona = "edge-deploy"
		}
		k := newKey("server", persona, serverRoutes, "edge-runtime/1."+fmt.Sprint(rng.IntN(9)))
		var platform uint32
		if rng.IntN(2) == 0 {
			platform = cdnASNs[rng.IntN(len(cdnASNs))]
		} else {
			platform = cloudASNs[rng.IntN(len(cloudASNs))]
		}
		pops := blocksOfASN(w, platform)
		rng.Shuffle(len(pops), func(i, j int) { pops[i], pops[j] = pops[j], pops[i] })
		pops = pops[:min(len(pops), between(rng, 8, 26))]
		ws := zipf(rng, len(pops))
		peak := math.Exp(uniform(rng, math.Log(0.1), math.Log(4)))
		originASN := cloudASNs[rng.IntN(len(cloudASNs))]
		ob := cloudBlock(originASN, -1)
		origin := []addr{w.pick(rng, ob), w.pick(rng, ob)}
		t0 := mid()
		canary := rng.IntN(3) > 0
		s0 := uniform(rng, 0.01, 0.1)
		t1 := t0.Add(time.Duration(uniform(rng, 1, 8) * float64(time.Hour)))
		t2 := t1.Add(time.Duration(uniform(rng, 0.5, 4) * float64(time.Hour)))
		share := func(t time.Time) float64 {
			switch {
			case !deploy:
				return 1
			case t.Before(t0):
				return 0
			case !canary:
				return 1
			case t.Before(t1):
				return s0
			}
			return s0 + (1-s0)*ramp(t, t1, t2)
		}
		add(&actor{
			rate: func(t time.Time) float64 {
				s := 0.0
				for i, b := range pops {
					s += ws[i] * diurnal(t, w.countries[w.blocks[b].country].offset, 0.5)
				}
				return peak * s
			},
			one: func(g *gen, t time.Time) {
				if g.rng.Float64() < share(t) {
					g.add(t, k, g.w.pick(g.rng, pops[pickWeighted(g.rng, ws)]), event.OutcomeValid, "")
					return
				}
				g.add(t, k, origin[g.rng.IntN(len(origin))], event.OutcomeValid, "")
			},
		})
	}
}

// Corporate SASE egress: a company's internal tool key, its users'
// traffic leaving through the secure web gateway's PoPs: the nearest
// PoP and its neighbours in other countries within minutes, a far PoP
// while someone travels. Half the companies roll the gateway out
// mid-trace (the office address goes on for hours meanwhile).
func (h *hardGen) sase() {
	rng, w, cfg, newKey, mid, pop, add, saseASNs := h.rng, h.w, h.cfg, h.newKey, h.mid, h.pop, h.add, h.saseASNs
	for range pop(2, 4) {
		rollout := rng.IntN(2) == 0
		persona := "sase-egress"
		if rollout {
			persona = "sase-rollout"
		}
		k := newKey("server", persona, serverRoutes, agents[rng.IntN(len(agents))])
		sase := saseASNs[rng.IntN(len(saseASNs))]
		all := blocksOfASN(w, sase)
		home := w.blocks[all[rng.IntN(len(all))]].country
		near := nearBlocks(w, all, home, between(rng, 2, 4))
		nw := zipf(rng, len(near))
		office := w.pick(rng, w.blockOf(rng, kindBusiness, home))
		off := w.countries[home].offset
		users := between(rng, 5, 60)
		perUser := uniform(rng, 0.002, 0.03)
		t0 := mid()
		t1 := t0.Add(time.Duration(uniform(rng, 1, 6) * float64(time.Hour)))
		type trip struct {
			from, to time.Time
			b        int
		}
		var trips []trip
		for range between(rng, 0, 3) {
			from := cfg.Start.Add(time.Duration(rng.Int64N(int64(cfg.Duration))))
			trips = append(trips, trip{from, from.Add(time.Duration(uniform(rng, 2, 30) * float64(time.Hour))), all[rng.IntN(len(all))]})
		}
		add(&actor{
			rate: func(t time.Time) float64 {
				r := float64(users) * perUser * diurnal(t, off, 0.95)
				if weekend(t, off) {
					r *= 0.1
				}
				return r
			},
			one: func(g *gen, t time.Time) {
				if rollout && g.rng.Float64() >= ramp(t, t0, t1) {
					g.add(t, k, office, event.OutcomeValid, "")
					return
				}
				for _, tr := range trips {
					if !t.Before(tr.from) && t.Before(tr.to) && g.rng.IntN(users) == 0 {
						g.add(t, k, g.w.pick(g.rng, tr.b), event.OutcomeValid, "")
						return
					}
				}
				g.add(t, k, g.w.pick(g.rng, near[pickWeighted(g.rng, nw)]), event.OutcomeValid, "")
			},
		})
	}
}

// Regional web keys with foreign visitors: sessions of tourists and
// expats (carriers and ISPs abroad), consumer VPN users (a VPN exit in
// any country) and satellite users (geolocated to a ground station).
func (h *hardGen) visitors() {
	rng, w, cfg, newKey, pop, add, plan := h.rng, h.w, h.cfg, h.newKey, h.pop, h.add, h.plan
	for range pop(3, 8) {
		k := newKey("browser", "regional-web-visitors", browserRoutes, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36")
		cs := w.pickCountries(rng, between(rng, 1, 3), nil)
		ws := zipf(rng, len(cs))
		home := map[int]bool{}
		for _, c := range cs {
			home[c] = true
		}
		peak := math.Exp(uniform(rng, math.Log(0.05), math.Log(1.5)))
		visitsPerHour := math.Exp(uniform(rng, math.Log(0.1), math.Log(6)))
		off := w.countries[cs[0]].offset
		var active []visit
		srng := rand.New(rand.NewPCG(cfg.Seed^0x7669736974, uint64(len(plan.actors))))
		add(&actor{
			rate: func(t time.Time) float64 {
				kept := active[:0]
				for _, s := range active {
					if t.Before(s.end) {
						kept = append(kept, s)
					}
				}
				active = kept
				for range poisson(srng, visitsPerHour/60*diurnal(t, off, 0.6)) {
					active = append(active, h.newVisit(srng, home, t))
				}
				r := 0.0
				for i, ci := range cs {
					r += ws[i] * peak * diurnal(t, w.countries[ci].offset, 0.85)
				}
				for _, s := range active {
					r += s.rate
				}
				return r
			},
			one: func(g *gen, t time.Time) {
				x := g.rng.Float64()
				// Visitors' share of the current rate.
				vs := 0.0
				for _, s := range active {
					vs += s.rate
				}
				base := 0.0
				for i, ci := range cs {
					base += ws[i] * peak * diurnal(t, w.countries[ci].offset, 0.85)
				}
				if len(active) > 0 && x*(base+vs) >= base {
					y := (x*(base+vs) - base)
					for _, s := range active {
						if y -= s.rate; y <= 0 {
							g.add(t, k, s.ip, event.OutcomeValid, "")
							return
						}
					}
					g.add(t, k, active[len(active)-1].ip, event.OutcomeValid, "")
					return
				}
				ci := cs[pickWeighted(g.rng, ws)]
				kind := kindISP
				if g.rng.IntN(4) == 0 {
					kind = kindMobile
				}
				g.add(t, k, g.w.pick(g.rng, g.w.blockOf(g.rng, kind, ci)), event.OutcomeValid, "")
			},
		})
	}
}

// visit is a foreign visitor's session on a regional web key.
type visit struct {
	end  time.Time
	ip   addr
	rate float64
}

// newVisit starts a visitor's session at t: abroad on a carrier or an ISP,
// behind a consumer VPN, or on the satellite ISP.
func (h *hardGen) newVisit(srng *rand.Rand, home map[int]bool, t time.Time) visit {
	w := h.w
	var b int
	switch x := srng.Float64(); {
	case x < 0.45:
		ci := w.pickCountries(srng, 1, home)[0]
		kind := kindISP
		if srng.IntN(2) == 0 {
			kind = kindMobile
		}
		b = w.blockOf(srng, kind, ci)
	case x < 0.8:
		bs := blocksOfASN(w, h.vpnASNs[srng.IntN(len(h.vpnASNs))])
		b = bs[srng.IntN(len(bs))]
	default:
		bs := blocksOfASN(w, h.satASN)
		b = bs[srng.IntN(len(bs))]
	}
	return visit{end: t.Add(time.Duration(uniform(srng, 2, 40) * float64(time.Minute))),
		ip: w.pick(srng, b), rate: uniform(srng, 0.03, 0.3)}
}

// IPv6-heavy mobile apps: most requests over IPv6 from carriers that
// give each device its own /64 and rotate its privacy address, so
// practically every request comes from an address (and /64) never seen
// before; the rest over IPv4 carrier-grade NAT.
func (h *hardGen) ipv6Mobile() {
	rng, w, newKey, pop, add := h.rng, h.w, h.newKey, h.pop, h.add
	for range pop(1, 3) {
		app := appNames[rng.IntN(len(appNames))]
		k := newKey("mobile", "ipv6-mobile", mobileRoutes, fmt.Sprintf(mobileAgents[rng.IntN(len(mobileAgents))], app, rng.IntN(20), rng.IntN(9)))
		cs := w.pickCountries(rng, between(rng, 1, 4), nil)
		ws := zipf(rng, len(cs))
		peak := math.Exp(uniform(rng, math.Log(0.2), math.Log(3)))
		share6 := uniform(rng, 0.5, 0.95)
		add(&actor{
			rate: func(t time.Time) float64 {
				r := 0.0
				for i, ci := range cs {
					r += ws[i] * diurnal(t, w.countries[ci].offset, 0.8)
				}
				return peak * r
			},
			one: func(g *gen, t time.Time) {
				b := g.w.blockOf(g.rng, kindMobile, cs[pickWeighted(g.rng, ws)])
				if g.rng.Float64() < share6 {
					g.add(t, k, g.w.v6(g.rng, b), event.OutcomeValid, "")
					return
				}
				g.add(t, k, g.w.pick(g.rng, b), event.OutcomeValid, "")
			},
		})
	}
}

// Region migration: a server key moving from one cloud region to
// another (same provider mostly, sometimes another), by canary (a few
// percent for hours, then the cut-over) or at once.
func (h *hardGen) migrations() {
	rng, w, newKey, mid, pop, add, cloudBlock, cloudASNs := h.rng, h.w, h.newKey, h.mid, h.pop, h.add, h.cloudBlock, h.cloudASNs
	for range pop(2, 5) {
		k := newKey("server", "region-migration", serverRoutes, agents[rng.IntN(len(agents))])
		from := cloudASNs[rng.IntN(len(cloudASNs))]
		fb := cloudBlock(from, -1)
		to := from
		if rng.IntN(10) < 3 {
			to = cloudASNs[rng.IntN(len(cloudASNs))]
		}
		// A canary to another provider's region (one new country and
		// network, a few addresses, steady, the old place still serving) is
		// what a leaked copy of the key looks like; it is left out (see the
		// README) and moves to another provider happen at once.
		canary := rng.IntN(5) < 3 && to == from
		tb := cloudBlock(to, w.blocks[fb].country)
		old := []addr{w.pick(rng, fb), w.pick(rng, fb)}
		nu := []addr{w.pick(rng, tb), w.pick(rng, tb), w.pick(rng, tb)}
		peak := math.Exp(uniform(rng, math.Log(0.03), math.Log(2)))
		off := w.countries[w.blocks[fb].country].offset
		t0 := mid()
		s0 := uniform(rng, 0.02, 0.1)
		t1 := t0.Add(time.Duration(uniform(rng, 1, 8) * float64(time.Hour)))
		t2 := t1.Add(time.Duration(uniform(rng, 10, 60) * float64(time.Minute)))
		if !canary {
			s0, t1, t2 = 0, t0, t0.Add(time.Duration(between(rng, 1, 5))*time.Minute)
		}
		add(&actor{
			rate: func(t time.Time) float64 { return peak * diurnal(t, off, 0.6) },
			one: func(g *gen, t time.Time) {
				s := 0.0
				if !t.Before(t0) {
					s = s0 + (1-s0)*ramp(t, t1, t2)
				}
				if g.rng.Float64() < s {
					g.add(t, k, nu[g.rng.IntN(len(nu))], event.OutcomeValid, "")
					return
				}
				g.add(t, k, old[g.rng.IntN(len(old))], event.OutcomeValid, "")
			},
		})
	}
}

// Key rotation (old and new key side by side, then the old one fades)
// and a brand-new key busy from its first minute.
func (h *hardGen) rotationAndNewKeys() {
	rng, w, newKey, mid, pop, add, clouds := h.rng, h.w, h.newKey, h.mid, h.pop, h.add, h.clouds
	for range pop(1, 3) {
		old := newKey("server", "rotated-old-key", serverRoutes, agents[rng.IntN(len(agents))])
		nu := newKey("server", "rotated-new-key", serverRoutes, old.ua)
		b := w.blockOf(rng, kindCloud, clouds[rng.IntN(len(clouds))])
		ips := []addr{w.pick(rng, b), w.pick(rng, b)}
		peak := math.Exp(uniform(rng, math.Log(0.05), math.Log(3)))
		off := w.countries[w.blocks[b].country].offset
		t0 := mid()
		t1 := t0.Add(time.Duration(uniform(rng, 0.2, 24) * float64(time.Hour)))
		add(&actor{
			rate: func(t time.Time) float64 { return peak * diurnal(t, off, 0.5) },
			one: func(g *gen, t time.Time) {
				k := old
				if g.rng.Float64() < ramp(t, t0, t1)*0.998 { // stragglers keep the old key
					k = nu
				}
				g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeValid, "")
			},
		})
	}
	for range pop(1, 2) {
		k := newKey("server", "new-key-onboarding", serverRoutes, agents[rng.IntN(len(agents))])
		var ips []addr
		for range between(rng, 1, 6) {
			ips = append(ips, w.pick(rng, w.blockOf(rng, kindCloud, clouds[rng.IntN(len(clouds))])))
		}
		peak := math.Exp(uniform(rng, math.Log(0.3), math.Log(5)))
		t0 := mid()
		add(&actor{
			rate: func(t time.Time) float64 {
				if t.Before(t0) {
					return 0
				}
				return peak * (0.3 + 0.7*ramp(t, t0, t0.Add(2*time.Hour)))
			},
			one: func(g *gen, t time.Time) { g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeValid, "") },
		})
	}
}

// A partner platform (workflow automation) calling with its customers'
// keys from one cloud egress pool; some customers deleted or revoked
// their keys and never updated the integration, which keeps polling.
func (h *hardGen) partnerPlatform() {
	rng, w, newKey, pop, add, cloudASNs := h.rng, h.w, h.newKey, h.pop, h.add, h.cloudASNs
	for range pop(1, 2) {
		asn := cloudASNs[rng.IntN(len(cloudASNs))]
		bs := blocksOfASN(w, asn)
		var pool []addr
		regions := []int{bs[rng.IntN(len(bs))], bs[rng.IntN(len(bs))]}
		for range between(rng, 20, 120) {
			pool = append(pool, w.pick(rng, regions[rng.IntN(len(regions))]))
		}
		type cust struct {
			k       *evalKey
			o       event.Outcome
			perPoll float64
			every   float64 // minutes between polls
		}
		var custs []cust
		var weights []float64
		total := 0.0
		n := between(rng, 15, 80)
		stale := max(1, int(float64(n)*uniform(rng, 0.03, 0.25)))
		for i := range n {
			c := cust{o: event.OutcomeValid, perPoll: float64(between(rng, 1, 4)), every: float64(between(rng, 1, 15))}
			if i < stale {
				switch x := rng.IntN(20); {
				case x < 12:
					c.o = event.OutcomeUnknown // deleted key
				case x < 16:
					c.o = event.OutcomeRevoked
					c.k = newKey("server", "partner-stale-revoked", serverRoutes, "PartnerFlow/2.0 (+https://partner.example.com)")
					c.k.Status = "revoked"
				default:
					c.o = event.OutcomeExpired
				}
			} else {
				c.k = newKey("server", "partner-platform", serverRoutes, "PartnerFlow/2.0 (+https://partner.example.com)")
			}
			custs = append(custs, c)
			weights = append(weights, c.perPoll/c.every/60)
			total += c.perPoll / c.every / 60
		}
		add(&actor{
			rate: func(t time.Time) float64 { return total * (0.7 + 0.3*diurnal(t, 0, 1)) },
			one: func(g *gen, t time.Time) {
				c := custs[pickWeighted(g.rng, weights)]
				ip := pool[g.rng.IntN(len(pool))]
				if c.o == event.OutcomeValid || c.o == event.OutcomeRevoked {
					g.add(t, c.k, ip, c.o, "")
					return
				}
				g.add(t, nil, ip, c.o, serverRoutes[g.rng.IntN(len(serverRoutes))])
				g.buf[len(g.buf)-1].UserAgent = "PartnerFlow/2.0 (+https://partner.example.com)"
			},
		})
	}
}

// A forgotten cron job still sending a revoked key from one server,
// every 1-10 minutes with a few retries.
func (h *hardGen) staleCron() {
	rng, w, newKey, pop, add, clouds := h.rng, h.w, h.newKey, h.pop, h.add, h.clouds
	for range pop(1, 2) {
		k := newKey("server", "stale-revoked-cron", serverRoutes, "cron-sync/0.9")
		k.Status = "revoked"
		ip := w.pick(rng, w.blockOf(rng, kindCloud, clouds[rng.IntN(len(clouds))]))
		r := float64(between(rng, 1, 4)) / float64(between(rng, 1, 10)) / 60
		add(&actor{rate: func(time.Time) float64 { return r },
			one: func(g *gen, t time.Time) { g.add(t, k, ip, event.OutcomeRevoked, "") }})
	}
}

// A team's shared key: a service at home goes on while one member uses
// the key abroad for a day or more (hotel and carrier networks), in
// sessions of a few minutes with pauses between them. (A member running
// a steady job abroad for most of an hour is what a leaked copy looks
// like; see the README.)
func (h *hardGen) teamTraveller() {
	rng, w, newKey, mid, pop, add, clouds := h.rng, h.w, h.newKey, h.mid, h.pop, h.add, h.clouds
	for range pop(1, 3) {
		k := newKey("server", "team-key-traveller", serverRoutes, "curl/8.5.0")
		home := w.pickCountries(rng, 1, nil)[0]
		svc := w.pick(rng, w.blockOf(rng, kindCloud, clouds[rng.IntN(len(clouds))]))
		dev := w.pick(rng, w.blockOf(rng, kindISP, home))
		dest := w.pickCountries(rng, 1, map[int]bool{home: true})[0]
		var tripIPs []addr
		for range between(rng, 1, 3) {
			kind := kindISP
			if rng.IntN(2) == 0 {
				kind = kindMobile
			}
			tripIPs = append(tripIPs, w.pick(rng, w.blockOf(rng, kind, dest)))
		}
		svcRate := math.Exp(uniform(rng, math.Log(0.005), math.Log(0.3)))
		devRate := uniform(rng, 0.005, 0.05)
		t0 := mid()
		t1 := t0.Add(time.Duration(uniform(rng, 20, 72) * float64(time.Hour)))
		// Abroad, sessions of 3-25 minutes and pauses of 20-90 minutes.
		var sessions [][2]time.Time
		for at := t0; at.Before(t1); {
			d := time.Duration(uniform(rng, 3, 25) * float64(time.Minute))
			sessions = append(sessions, [2]time.Time{at, at.Add(d)})
			at = at.Add(d + time.Duration(uniform(rng, 20, 90)*float64(time.Minute)))
		}
		inSession := func(t time.Time) bool {
			for _, s := range sessions {
				if !t.Before(s[0]) && t.Before(s[1]) {
					return true
				}
			}
			return false
		}
		add(&actor{
			rate: func(t time.Time) float64 {
				off := w.countries[home].offset
				if !t.Before(t0) && t.Before(t1) {
					off = w.countries[dest].offset
				}
				r := svcRate
				if h := localHour(t, off); h >= 9 && h < 19 {
					r += devRate
				}
				return r
			},
			one: func(g *gen, t time.Time) {
				off := w.countries[home].offset
				abroad := !t.Before(t0) && t.Before(t1)
				if abroad {
					off = w.countries[dest].offset
				}
				h := localHour(t, off)
				if h >= 9 && h < 19 && g.rng.Float64()*(svcRate+devRate) >= svcRate && (!abroad || inSession(t)) {
					if abroad {
						g.add(t, k, tripIPs[g.rng.IntN(len(tripIPs))], event.OutcomeValid, "")
					} else {
						g.add(t, k, dev, event.OutcomeValid, "")
					}
					return
				}
				g.add(t, k, svc, event.OutcomeValid, "")
			},
		})
	}
}

// Nightly batch jobs that move: the clocks change (the same local hour
// is one UTC hour earlier or later from a day on), or one night's run
// fails and is run again hours later.
func (h *hardGen) movedBatch() {
	rng, w, cfg, newKey, mid, pop, add, clouds := h.rng, h.w, h.cfg, h.newKey, h.mid, h.pop, h.add, h.clouds
	for range pop(1, 3) {
		k := newKey("batch", "batch-dst-rerun", batchRoutes, "batch-exporter/3."+fmt.Sprint(rng.IntN(9)))
		b := w.blockOf(rng, kindCloud, clouds[rng.IntN(len(clouds))])
		ips := []addr{w.pick(rng, b), w.pick(rng, b)}
		base := math.Exp(uniform(rng, math.Log(0.01), math.Log(0.15)))
		factor := uniform(rng, 20, 40)
		at := time.Duration(rng.IntN(24*60)) * time.Minute
		dur := time.Duration(between(rng, 10, 35)) * time.Minute
		shiftFrom := max(1, int(mid().Sub(cfg.Start)/(24*time.Hour))) // a day of the trace starts at the old hour
		shift := time.Hour
		if rng.IntN(2) == 0 {
			shift = -time.Hour
		}
		rerunDay := between(rng, 1, max(1, int(cfg.Duration/(24*time.Hour))-1))
		rerunAfter := time.Duration(uniform(rng, 1, 6) * float64(time.Hour))
		days := int(cfg.Duration/(24*time.Hour)) + 2
		add(&actor{
			rate: func(t time.Time) float64 {
				d := int(t.Sub(cfg.Start) / (24 * time.Hour))
				for _, day := range []int{d - 1, d} {
					if day < 0 || day >= days {
						continue
					}
					s := cfg.Start.Add(time.Duration(day)*24*time.Hour + at)
					if day >= shiftFrom {
						s = s.Add(shift)
					}
					if !t.Before(s) && t.Before(s.Add(dur)) {
						return base * factor
					}
					if day == rerunDay && !t.Before(s.Add(rerunAfter)) && t.Before(s.Add(rerunAfter+dur)) {
						return base * factor
					}
				}
				return base
			},
			one: func(g *gen, t time.Time) { g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeValid, "") },
		})
	}
}

// A customer's load test against its own key from a load-testing
// service in several regions of one cloud: a legitimate spike. Labelled:
// a throttle protects the service, suspend and revoke are forbidden.
func (h *hardGen) loadTest() {
	rng, w, cfg, newKey, add, clouds, cloudASNs, plan, end := h.rng, h.w, h.cfg, h.newKey, h.add, h.clouds, h.cloudASNs, h.plan, h.end
	{
		k := newKey("server", "load-tested-server", serverRoutes, agents[rng.IntN(len(agents))])
		b := w.blockOf(rng, kindCloud, clouds[rng.IntN(len(clouds))])
		ips := []addr{w.pick(rng, b), w.pick(rng, b)}
		peak := math.Exp(uniform(rng, math.Log(0.05), math.Log(1.5)))
		off := w.countries[w.blocks[b].country].offset
		base := func(t time.Time) float64 { return peak * diurnal(t, off, 0.6) }
		add(&actor{rate: base, one: func(g *gen, t time.Time) { g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeValid, "") }})
		svc := cloudASNs[rng.IntN(len(cloudASNs))]
		regs := blocksOfASN(w, svc)
		rng.Shuffle(len(regs), func(i, j int) { regs[i], regs[j] = regs[j], regs[i] })
		regs = regs[:min(len(regs), between(rng, 3, 8))]
		var gens []addr
		for range between(rng, 50, 400) {
			gens = append(gens, w.pick(rng, regs[rng.IntN(len(regs))]))
		}
		factor := uniform(rng, 20, 100)
		// Once the key has a day of history (when the set is long enough):
		// before, the volume rule knows no hour of the day and throttles
		// only far above the key's mean.
		lo := cfg.Start.Add(max(cfg.AttackAfter, min(25*time.Hour, cfg.Duration-2*time.Hour)))
		d := time.Duration(between(rng, 10, 45)) * time.Minute
		s := lo.Add(time.Duration(rng.Int64N(int64(end.Add(-d - 10*time.Minute).Sub(lo))))).Truncate(time.Minute)
		a := &attack{key: k.KeyID}
		a.label.ID, a.label.Scenario, a.label.Group = "load-test-1", "load-test", k.KeyID
		a.label.IntendedAction, a.label.ForbiddenActions = "throttle", []string{"revoke", "suspend"}
		a.label.Start, a.label.End = s, s.Add(d)
		a.label.Note = fmt.Sprintf("the customer's own load test: %.0fx the usual peak from %d addresses in %d regions of AS%d for %s", factor, len(gens), len(regs), svc, d)
		a.actor = actor{rate: func(t time.Time) float64 {
			if !t.Before(s) && t.Before(s.Add(d)) {
				return factor * peak
			}
			return 0
		}, one: func(g *gen, t time.Time) {
			g.add(t, k, gens[g.rng.IntN(len(gens))], event.OutcomeValid, "")
			g.buf[len(g.buf)-1].UserAgent = "k6/0.54.0 (https://k6.io/)"
		}}
		plan.attacks = append(plan.attacks, a)
	}
}

// A surge day on half the seeds (EvalConfig.Surge): every key at several times its usual
// volume (a Black Friday, a national holiday sale), ramping up in the
// morning and down at night.
// From a stream of its own: whether a seed has a surge day does not
// change when populations are added.
func (h *hardGen) surgeDay() {
	rng, cfg, plan, end := h.rng, h.cfg, h.plan, h.end
	rng = rand.New(rand.NewPCG(cfg.Seed^0x7375726765, 5))
	if (cfg.Surge > 0 || cfg.Surge == 0 && rng.IntN(2) == 0) && cfg.Duration >= 36*time.Hour {
		day := cfg.Start.Truncate(24 * time.Hour).Add(24 * time.Hour)
		if day.Sub(cfg.Start) < 14*time.Hour {
			day = day.Add(24 * time.Hour)
		}
		if day.Add(24 * time.Hour).After(end) {
			day = day.Add(-24 * time.Hour)
		}
		f := uniform(rng, 3, 10)
		up := day.Add(time.Duration(uniform(rng, 4, 9) * float64(time.Hour)))
		top := up.Add(3 * time.Hour)
		down := top.Add(time.Duration(uniform(rng, 6, 12) * float64(time.Hour)))
		plan.surgeNote = fmt.Sprintf("every key up to %.1fx its usual (by its own share, 30-100%% of that) from %s, full %s..%s, back by %s",
			f, up.Format(time.RFC3339), top.Format("15:04"), down.Format("15:04"), down.Add(3*time.Hour).Format("15:04"))
		plan.surge = func(t time.Time) float64 {
			return 1 + (f-1)*(ramp(t, up, top)-ramp(t, down, down.Add(3*time.Hour)))
		}
	}
}
