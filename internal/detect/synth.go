package detect

import (
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// Synth generates a plausible event mix for benchmarks without allocating
// per event: mostly valid keyed traffic from each key's usual address and
// country, some anonymous, malformed, unknown and revoked requests, and a
// little abuse that makes the starter pack fire.
type Synth struct {
	rng       *rand.Rand
	keys      []string
	homes     []string
	ips       []string
	countries []string
	now       time.Time
	step      time.Duration
	seq       uint64
	ids       []string
	arena     []byte
	offs      []int32
}

// NewSynth generates traffic over nKeys keys, starting at start, one event
// every step of event time.
func NewSynth(nKeys int, start time.Time, step time.Duration, seed uint64) *Synth {
	s := &Synth{rng: rand.New(rand.NewPCG(seed, seed^0x5bd1e995)), now: start, step: step,
		countries: []string{"US", "DE", "FR", "GB", "BR", "JP", "IN", "NG", "CA", "AU"}}
	s.keys = make([]string, nKeys)
	s.homes = make([]string, nKeys)
	for i := range s.keys {
		s.keys[i] = "key_" + strconv.Itoa(i)
		s.homes[i] = "10." + strconv.Itoa(i>>16&255) + "." + strconv.Itoa(i>>8&255) + "." + strconv.Itoa(i&255)
	}
	s.ips = make([]string, 1<<16)
	for i := range s.ips {
		s.ips[i] = "100." + strconv.Itoa(64+i>>12) + "." + strconv.Itoa(i>>4&255) + "." + strconv.Itoa(i&15*16+1)
	}
	s.ids = make([]string, 1<<12)
	for i := range s.ids {
		s.ids[i] = "bench-" + strconv.Itoa(i)
	}
	return s
}

// Fill overwrites evs with the next len(evs) events. Like events decoded
// from one bus batch, their key ids and addresses share one buffer.
func (s *Synth) Fill(evs []event.Event) {
	s.fill(evs)
	s.arena, s.offs = s.arena[:0], s.offs[:0]
	for i := range evs {
		s.arena = append(s.arena, evs[i].KeyID...)
		s.arena = append(s.arena, evs[i].ClientIP...)
		s.offs = append(s.offs, int32(len(evs[i].KeyID)), int32(len(evs[i].ClientIP)))
	}
	buf := string(s.arena)
	at := 0
	for i := range evs {
		kl, il := int(s.offs[2*i]), int(s.offs[2*i+1])
		evs[i].KeyID = buf[at : at+kl]
		evs[i].ClientIP = buf[at+kl : at+kl+il]
		at += kl + il
	}
}

func (s *Synth) fill(evs []event.Event) {
	for i := range evs {
		e := &evs[i]
		s.now = s.now.Add(s.step)
		s.seq++
		k := s.rng.IntN(len(s.keys))
		r := s.rng.IntN(1000)
		*e = event.Event{ID: s.ids[s.seq&(1<<12-1)], Time: s.now, Project: "proj_bench", Method: "GET",
			Host: "api.example.com", Route: "/v1/items", Status: 200, LatencyUS: 800, BytesIn: 200, BytesOut: 1500,
			UserAgent: "client/1.0", VerifierID: "v1", CostUnits: 1, ASN: 64500 + uint32(k&7), Country: s.countries[k%3]}
		switch {
		case r < 850:
			e.Outcome, e.KeyID, e.ClientIP = event.OutcomeValid, s.keys[k], s.homes[k]
		case r < 880:
			e.Outcome, e.KeyID, e.ClientIP, e.Status = event.OutcomeRateLimited, s.keys[k], s.homes[k], 429
		case r < 930:
			e.Outcome, e.ClientIP, e.Status = event.OutcomeMissing, s.ips[s.rng.IntN(len(s.ips))], 401
		case r < 960:
			e.Outcome, e.ClientIP, e.Status = event.OutcomeMalformed, s.ips[s.rng.IntN(len(s.ips))], 401
		case r < 985:
			e.Outcome, e.ClientIP, e.Status = event.OutcomeUnknown, s.ips[s.rng.IntN(len(s.ips))], 401
		case r < 995:
			e.Outcome, e.KeyID, e.ClientIP, e.Status = event.OutcomeRevoked, s.keys[k], s.ips[s.rng.IntN(len(s.ips))], 401
		default:
			// A few keys roam: a leak in progress.
			k = s.rng.IntN(16)
			e.Outcome, e.KeyID, e.ClientIP = event.OutcomeValid, s.keys[k], s.ips[s.rng.IntN(len(s.ips))]
			e.Country = s.countries[s.rng.IntN(len(s.countries))]
		}
	}
}
