package loadgen

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/keymeter/keymeter/internal/evaluate"
	"github.com/keymeter/keymeter/internal/event"
)

var attackAgents = []string{"python-requests/2.31.0", "Go-http-client/1.1", "curl/7.88.1", "Mozilla/5.0 (compatible)", "axios/1.6.2", ""}

// buildAttacks draws the attacks of an evaluation set: their victims,
// networks, rates, durations and start times, all from the seed.
func buildAttacks(rng *rand.Rand, w *world, cfg EvalConfig, servers, regionals []*serverKey,
	newKey func(kind, persona string, routes []string, ua string) *evalKey) []*attack {
	lo := cfg.Start.Add(cfg.AttackAfter)
	end := cfg.Start.Add(cfg.Duration)
	startFor := func(dur time.Duration) (time.Time, time.Duration) {
		room := end.Add(-10 * time.Minute).Sub(lo)
		if dur > room*2/3 {
			dur = room * 2 / 3
		}
		return lo.Add(time.Duration(rng.Int64N(int64(room - dur)))).Truncate(time.Minute), dur.Truncate(time.Minute)
	}
	minutes := func(a, b int) time.Duration { return time.Duration(between(rng, a, b)) * time.Minute }
	within := func(s time.Time, d time.Duration) func(time.Time) bool {
		return func(t time.Time) bool { return !t.Before(s) && t.Before(s.Add(d)) }
	}
	// Attack networks do not share a hosting block.
	var hosting []int
	for ci := range w.countries {
		hosting = append(hosting, w.byKind[kindHosting][ci]...)
	}
	rng.Shuffle(len(hosting), func(i, j int) { hosting[i], hosting[j] = hosting[j], hosting[i] })
	nextHosting := 0
	hostingBlock := func() int {
		b := hosting[nextHosting%len(hosting)]
		nextHosting++
		return b
	}
	victim := func(pools ...[]*serverKey) *serverKey {
		var cands []*serverKey
		for _, p := range pools {
			for _, s := range p {
				if !s.used {
					cands = append(cands, s)
				}
			}
		}
		if len(cands) == 0 {
			return nil
		}
		v := cands[rng.IntN(len(cands))]
		v.used = true
		return v
	}
	ua := func() string { return attackAgents[rng.IntN(len(attackAgents))] }
	var out []*attack
	reps := func() int {
		if cfg.Attacks > 0 {
			return cfg.Attacks
		}
		return between(rng, 1, 2)
	}
	label := func(scenario string, n int, group, intended string, forbidden ...string) evaluate.Label {
		if forbidden == nil {
			forbidden = []string{}
		}
		return evaluate.Label{ID: fmt.Sprintf("%s-%d", scenario, n), Scenario: scenario, Group: group, IntendedAction: intended, ForbiddenActions: forbidden}
	}

	for n, nr := 1, reps(); n <= nr; n++ { // anonymous flood from every address of a /24
		b := hostingBlock()
		bl := w.blocks[b]
		net := bl.base | uint32(rng.IntN(256))<<8
		s, d := startFor(minutes(3, 15))
		in := within(s, d)
		r := uniform(rng, 20, 200)
		agent := ua()
		a := &attack{label: label("anon-burst", n, ipString(net)+"/24", "block_ip")}
		a.label.Start, a.label.End = s, s.Add(d)
		a.label.Note = fmt.Sprintf("%.0f req/s anonymous from %s/24 (AS%d, %s) for %s", r, ipString(net), bl.asn, w.countries[bl.country].code, d)
		a.actor = actor{rate: func(t time.Time) float64 {
			if in(t) {
				return r
			}
			return 0
		}, one: func(g *gen, t time.Time) {
			g.add(t, nil, addr{ip: net | uint32(1+g.rng.IntN(254)), country: bl.country, asn: bl.asn}, event.OutcomeMissing, "/v1/search")
			g.buf[len(g.buf)-1].UserAgent = agent
		}}
		out = append(out, a)
	}
	for n, nr := 1, reps(); n <= nr; n++ { // credential stuffing from one address
		b := hostingBlock()
		ip := w.pick(rng, b)
		s, d := startFor(minutes(10, 60))
		in := within(s, d)
		r := uniform(rng, 1, 15)
		agent := ua()
		a := &attack{label: label("credential-stuffing", n, ip.String()+"/32", "block_ip")}
		a.label.Start, a.label.End = s, s.Add(d)
		a.label.Note = fmt.Sprintf("%.1f req/s of made-up keys from %s (AS%d) for %s", r, ip, ip.asn, d)
		a.actor = actor{rate: func(t time.Time) float64 {
			if in(t) {
				return r
			}
			return 0
		}, one: func(g *gen, t time.Time) {
			o := event.OutcomeUnknown
			if g.rng.IntN(3) == 0 {
				o = event.OutcomeMalformed
			}
			g.add(t, nil, ip, o, "/v1/profile")
			g.buf[len(g.buf)-1].UserAgent = agent
		}}
		out = append(out, a)
	}
	for n, nr := 1, reps(); n <= nr; n++ { // credential stuffing spread over one ASN
		b := hostingBlock()
		bl := w.blocks[b]
		var ips []addr
		for range between(rng, 40, 200) {
			ips = append(ips, w.pick(rng, b))
		}
		s, d := startFor(minutes(30, 120))
		in := within(s, d)
		r := uniform(rng, 0.5, 5)
		a := &attack{label: label("credential-stuffing-asn", n, ipString(bl.base)+"/16", "block_ip")}
		a.label.Start, a.label.End = s, s.Add(d)
		a.label.ASN = bl.asn
		a.label.Note = fmt.Sprintf("%.1f req/s of made-up keys from %d addresses of AS%d for %s", r, len(ips), bl.asn, d)
		a.actor = actor{rate: func(t time.Time) float64 {
			if in(t) {
				return r
			}
			return 0
		}, one: func(g *gen, t time.Time) {
			o := event.OutcomeUnknown
			if g.rng.IntN(4) == 0 {
				o = event.OutcomeMalformed
			}
			g.add(t, nil, ips[g.rng.IntN(len(ips))], o, "/v1/login")
		}}
		out = append(out, a)
	}
	for n, nr := 1, reps(); n <= nr; n++ { // geography shift: a key suddenly used from many new countries
		v := victim(servers, regionals)
		if v == nil {
			break
		}
		not := map[int]bool{}
		for _, c := range v.countries {
			not[c] = true
		}
		cs := w.pickCountries(rng, between(rng, 5, 12), not)
		var ips []addr
		for _, ci := range cs {
			for range between(rng, 1, 3) {
				kinds := []netKind{kindISP, kindHosting, kindCloud, kindMobile}
				b := -1
				for b < 0 {
					b = w.blockOf(rng, kinds[rng.IntN(len(kinds))], ci)
				}
				ips = append(ips, w.pick(rng, b))
			}
		}
		s, d := startFor(minutes(15, 60))
		in := within(s, d)
		r := uniform(rng, 0.3, 3)
		k := v.k
		a := &attack{label: label("geo-shift", n, k.KeyID, "revoke"), key: k.KeyID}
		a.label.Start, a.label.End = s, s.Add(d)
		a.label.Note = fmt.Sprintf("%s key used from %d new countries, %.1f req/s for %s", k.Persona, len(cs), r, d)
		a.actor = actor{rate: func(t time.Time) float64 {
			if in(t) {
				return r
			}
			return 0
		}, one: func(g *gen, t time.Time) { g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeValid, "") }}
		out = append(out, a)
	}
	for n, nr := 1, reps(); n <= nr; n++ { // a leaked key used from a botnet
		v := victim(servers)
		if v == nil {
			break
		}
		cs := w.pickCountries(rng, between(rng, 15, 40), nil)
		var ips []addr
		for range between(rng, 150, 600) {
			kind := kindISP
			if rng.IntN(3) == 0 {
				kind = kindMobile
			}
			ips = append(ips, w.pick(rng, w.blockOf(rng, kind, cs[rng.IntN(len(cs))])))
		}
		s, d := startFor(minutes(20, 120))
		in := within(s, d)
		r := uniform(rng, 3, 30)
		k := v.k
		a := &attack{label: label("leaked-key-botnet", n, k.KeyID, "revoke"), key: k.KeyID}
		a.label.Start, a.label.End = s, s.Add(d)
		a.label.Note = fmt.Sprintf("server key used from %d addresses in %d countries, %.1f req/s for %s", len(ips), len(cs), r, d)
		a.actor = actor{rate: func(t time.Time) float64 {
			if in(t) {
				return r
			}
			return 0
		}, one: func(g *gen, t time.Time) {
			g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeValid, "/v1/customers")
			g.buf[len(g.buf)-1].UserAgent = "python-requests/2.31.0"
		}}
		out = append(out, a)
	}
	for n, nr := 1, reps(); n <= nr; n++ { // low and slow from a new country and network
		v := victim(servers, regionals)
		if v == nil {
			break
		}
		not := map[int]bool{}
		for _, c := range v.countries {
			not[c] = true
		}
		b := hostingBlock()
		if not[w.blocks[b].country] {
			b = hostingBlock()
		}
		var ips []addr
		for range between(rng, 1, 2) {
			ips = append(ips, w.pick(rng, b))
		}
		s, d := startFor(time.Duration(uniform(rng, 2, 8) * float64(time.Hour)))
		in := within(s, d)
		r := uniform(rng, 1, 5) / 60
		k := v.k
		a := &attack{label: label("low-and-slow", n, k.KeyID, "suspend"), key: k.KeyID}
		a.label.Start, a.label.End = s, s.Add(d)
		a.label.Note = fmt.Sprintf("%s key used from %s (AS%d, new), %.1f req/min for %s", k.Persona, ips[0], ips[0].asn, r*60, d.Round(time.Minute))
		a.actor = actor{rate: func(t time.Time) float64 {
			if in(t) {
				return r
			}
			return 0
		}, one: func(g *gen, t time.Time) { g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeValid, "/v1/customers") }}
		out = append(out, a)
	}
	for n, nr := 1, reps(); n <= nr; n++ { // quota spike of a legitimate key: throttle, never revoke
		v := victim(servers)
		if v == nil {
			break
		}
		factor := uniform(rng, 15, 60)
		s, d := startFor(minutes(10, 60))
		in := within(s, d)
		k, ips, base := v.k, v.ips, v.rate
		a := &attack{label: label("quota-spike", n, k.KeyID, "throttle", "revoke", "suspend"), key: k.KeyID}
		a.label.Start, a.label.End = s, s.Add(d)
		a.label.Note = fmt.Sprintf("legitimate key at %.0fx its usual rate from its own addresses for %s", factor, d)
		a.actor = actor{rate: func(t time.Time) float64 {
			if in(t) {
				return factor * max(base(t), 0.05)
			}
			return 0
		}, one: func(g *gen, t time.Time) { g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeValid, "") }}
		out = append(out, a)
	}
	for n, nr := 1, reps(); n <= nr; n++ { // a revoked key tried again
		k := newKey("server", "revoked-key", serverRoutes, "Go-http-client/1.1")
		k.Status = "revoked"
		var ips []addr
		for range between(rng, 1, 4) {
			ips = append(ips, w.pick(rng, hostingBlock()))
		}
		s, d := startFor(minutes(10, 60))
		in := within(s, d)
		r := float64(between(rng, 20, 300)) / d.Seconds()
		a := &attack{label: label("revoked-key-tried", n, k.KeyID, "alert"), key: k.KeyID}
		a.label.Start, a.label.End = s, s.Add(d)
		a.label.Note = fmt.Sprintf("revoked key tried %.0f times from %d addresses over %s", r*d.Seconds(), len(ips), d)
		a.actor = actor{rate: func(t time.Time) float64 {
			if in(t) {
				return r
			}
			return 0
		}, one: func(g *gen, t time.Time) { g.add(t, k, ips[g.rng.IntN(len(ips))], event.OutcomeRevoked, "") }}
		out = append(out, a)
	}
	return out
}
