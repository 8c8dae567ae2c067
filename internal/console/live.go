package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
)

// The live overview: server-sent events from GET /console/live. One hub
// per console tails the events on the bus (a consumer group of its own,
// starting at the end of the log, so the aggregator and detector lose
// nothing) while at least one stream is open, and sends every stream the
// requests per second by outcome, consumer lag per partition and the
// events stored. Each stream adds, from the API with its session's token,
// the decisions and revocations of the last hour and the rules in dry-run
// or with a tripped breaker.
const (
	maxLiveStreams = 32
	// maxLiveStreamsPerSession keeps one session (one person, or one
	// stolen cookie) from taking every stream: two tabs, and a reload's
	// new stream before the server has seen the old one close.
	maxLiveStreamsPerSession = 3
	liveTick                 = time.Second
	liveLagEvery             = 2 // ticks
	liveStoredEvery          = 5 // ticks
	liveSummaryEvery         = 10 * time.Second
	// liveLinger keeps the hub, and its one consumer, running after the
	// last stream closes, so that a reconnect or a page change reuses it
	// instead of creating a consumer group each time.
	liveLinger = 30 * time.Second
)

type liveSnap struct {
	Time   int64                        `json:"t"`
	Rate   map[string]float64           `json:"rate"` // events/s by outcome
	Lag    map[string]map[string]uint64 `json:"lag"`  // group -> partition -> pending batches
	LagErr string                       `json:"lag_error,omitempty"`
	Stored *uint64                      `json:"stored,omitempty"` // events stored
	Tail   string                       `json:"tail,omitempty"`   // why the bus is not tailed
}

type liveHub struct {
	c *Console

	mu        sync.Mutex
	subs      map[chan []byte]string // stream -> its session's id
	bySession map[string]int         // open streams per session
	stop      context.CancelFunc
	done      chan struct{} // closed when the running loop has ended
	counts    map[string]uint64
	last      []byte // the latest snapshot, sent to a stream as it opens
	linger    time.Duration
	idle      *time.Timer // stops the loop liveLinger after the last stream
	gen       uint64      // counts subscriptions: an idle stop checks it
}

func newLiveHub(c *Console) *liveHub {
	return &liveHub{c: c, subs: map[chan []byte]string{}, bySession: map[string]int{}, counts: map[string]uint64{}, linger: liveLinger}
}

// Why subscribe refused a stream.
var (
	errLiveFull       = fmt.Errorf("too many live streams open (at most %d); try again later", maxLiveStreams)
	errLiveSessionMax = fmt.Errorf("this session has too many live streams open (at most %d); close another tab showing the overview", maxLiveStreamsPerSession)
)

// subscribe adds a stream of session sid, starting the hub's loop for the
// first; errLiveSessionMax when the session has
// maxLiveStreamsPerSession open, errLiveFull when maxLiveStreams are.
func (h *liveHub) subscribe(sid string) (chan []byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bySession[sid] >= maxLiveStreamsPerSession {
		return nil, errLiveSessionMax
	}
	if len(h.subs) >= maxLiveStreams {
		return nil, errLiveFull
	}
	ch := make(chan []byte, 1)
	h.subs[ch] = sid
	h.bySession[sid]++
	h.gen++
	if h.idle != nil {
		h.idle.Stop()
		h.idle = nil
	}
	if h.last != nil {
		ch <- h.last
	}
	if h.stop == nil {
		ctx, cancel := context.WithCancel(context.Background())
		h.stop, h.done = cancel, make(chan struct{})
		go h.run(ctx, h.done)
	}
	return ch, nil
}

// unsubscribe removes a stream; liveLinger after the last one the loop
// (and the tail) stop, unless a stream opened meanwhile.
func (h *liveHub) unsubscribe(ch chan []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if sid, ok := h.subs[ch]; ok {
		delete(h.subs, ch)
		if h.bySession[sid]--; h.bySession[sid] <= 0 {
			delete(h.bySession, sid)
		}
	}
	if len(h.subs) == 0 && h.shuttingDown() {
		h.stopLocked() // no lingering past the server's shutdown
		return
	}
	if len(h.subs) == 0 && h.stop != nil && h.idle == nil {
		gen := h.gen
		h.idle = time.AfterFunc(h.linger, func() { h.stopIdle(gen) })
	}
}

func (h *liveHub) shuttingDown() bool {
	select {
	case <-h.c.cfg.Sources.Done:
		return true
	default:
		return false // also when Done is nil
	}
}

// stopIdle stops the loop if no stream opened since the idle timer was set.
func (h *liveHub) stopIdle(gen uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if gen != h.gen || len(h.subs) > 0 {
		return
	}
	h.idle = nil
	h.stopLocked()
}

func (h *liveHub) stopLocked() {
	if h.stop != nil {
		h.stop()
		h.stop, h.last = nil, nil
	}
}

// close stops the loop at once (the server is shutting down) and waits
// until it and its tail have ended and the tail's consumer group is gone.
func (h *liveHub) close() {
	h.mu.Lock()
	if h.idle != nil {
		h.idle.Stop()
		h.idle = nil
	}
	done := h.done
	h.stopLocked()
	h.mu.Unlock()
	if done != nil {
		<-done
	}
}

func (h *liveHub) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	src := h.c.cfg.Sources
	tailErr, tailDone := h.tail(ctx)
	defer func() { <-tailDone }()
	groups := src.LagGroups
	if len(groups) == 0 {
		groups = []string{"aggregator", "detector"}
	}
	t := time.NewTicker(liveTick)
	defer t.Stop()
	prev := time.Now()
	var lag map[string]map[string]uint64
	var lagErr string
	var stored *uint64
	for tick := 0; ; tick++ {
		if src.Bus != nil && tick%liveLagEvery == 0 {
			lag, lagErr = map[string]map[string]uint64{}, ""
			for _, g := range groups {
				lctx, cancel := context.WithTimeout(ctx, time.Second)
				m, err := src.Bus.Lag(lctx, g)
				cancel()
				if err != nil {
					lagErr = err.Error()
					continue
				}
				if len(m) == 0 {
					continue // no such group here
				}
				pm := map[string]uint64{}
				for p, n := range m {
					pm[strconv.Itoa(p)] = n
				}
				lag[g] = pm
			}
		}
		if src.Store != nil && tick%liveStoredEvery == 0 {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if n, err := src.Store.Count(sctx, "requests"); err == nil {
				stored = &n
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			secs := now.Sub(prev).Seconds()
			prev = now
			snap := liveSnap{Time: now.Unix(), Rate: map[string]float64{}, Lag: lag, LagErr: lagErr, Stored: stored, Tail: tailErr}
			h.mu.Lock()
			for o, n := range h.counts {
				snap.Rate[o] = float64(n) / secs
			}
			clear(h.counts)
			h.mu.Unlock()
			b, _ := json.Marshal(snap)
			h.broadcast(ctx, b)
		}
	}
}

// groupDeleter is a bus that can delete a consumer group (natsbus,
// kafkabus), so that a tail leaves nothing behind.
type groupDeleter interface {
	DeleteGroup(ctx context.Context, group string) error
}

// tail counts the events on the bus by outcome with one consumer group of
// its own until ctx ends, then closes and deletes the group; the channel
// is closed once that is done. The string says why nothing is tailed.
func (h *liveHub) tail(ctx context.Context) (string, <-chan struct{}) {
	done := make(chan struct{})
	b := h.c.cfg.Sources.Bus
	if b == nil {
		close(done)
		return "no bus here", done
	}
	group := "console-live-" + randomToken()[:10]
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: group, StartAtEnd: true})
	if err != nil {
		// A consumer half made (some partitions bound) is deleted too.
		h.deleteGroup(group)
		close(done)
		if ctx.Err() == nil {
			h.c.log.Warn("console: live tail", "err", err)
		}
		return "cannot tail the bus: " + err.Error(), done
	}
	go func() {
		defer close(done)
		_ = bus.TailEvents(ctx, cons, func(ev *event.Event) {
			h.mu.Lock()
			h.counts[ev.Outcome.String()]++
			h.mu.Unlock()
		})
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = cons.Close(cctx)
		h.deleteGroup(group)
	}()
	return "", done
}

// deleteGroup deletes a tail's consumer group if the bus can.
func (h *liveHub) deleteGroup(group string) {
	gd, ok := h.c.cfg.Sources.Bus.(groupDeleter)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := gd.DeleteGroup(ctx, group); err != nil {
		h.c.log.Warn("console: live tail: consumer group not deleted", "group", group, "err", err)
	}
}

func (h *liveHub) broadcast(ctx context.Context, b []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	h.last = b
	for ch := range h.subs {
		select {
		case ch <- b:
		default: // a slow stream gets the next one
		}
	}
}

// liveSummary is what a stream reads from the API with its session's token.
type liveSummary struct {
	Decisions   int      `json:"decisions"`
	Revocations int      `json:"revocations"`
	DecErr      string   `json:"decisions_error,omitempty"`
	Rules       []string `json:"rules"` // "id: dry_run", "id: breaker tripped"
}

func (c *Console) summary(ctx context.Context, s *session) liveSummary {
	var out liveSummary
	out.Decisions, out.Revocations, out.DecErr = c.lastHourDecisions(ctx, s)
	var rr struct {
		Rules []ruleJSON `json:"rules"`
	}
	out.Rules = []string{}
	if c.call(ctx, s, "GET", "/v1/rules", nil, nil, &rr) == nil {
		for _, x := range rr.Rules {
			switch {
			case x.Tripped:
				out.Rules = append(out.Rules, x.ID+": breaker tripped")
			case x.Effective == "dry_run":
				out.Rules = append(out.Rules, x.ID+": dry_run")
			}
		}
	}
	sort.Strings(out.Rules)
	return out
}

// lastHourDecisions counts the decisions of the last hour and the enforced
// revocations among them; errMsg is why they could not be read.
func (c *Console) lastHourDecisions(ctx context.Context, s *session) (decisions, revocations int, errMsg string) {
	var dr decisionsResp
	if err := c.call(ctx, s, "GET", "/v1/decisions", url.Values{"from": {time.Now().UTC().Add(-time.Hour).Format(time.RFC3339)}, "limit": {"10000"}}, nil, &dr); err != nil {
		errMsg = err.Error()
	}
	for _, x := range dr.Decisions {
		decisions++
		if x.Action == "revoke" && x.Mode == "enforce" {
			revocations++
		}
	}
	return decisions, revocations, errMsg
}

// stillSignedIn tells whether the stream's session is still live (without
// touching it: an open overview must not keep an unattended session alive).
func (c *Console) stillSignedIn(s *session) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.sessions[s.id]
	return o != nil && !c.expired(o, time.Now())
}

// liveStream serves GET /console/live as server-sent events: "stats" every
// second from the hub, "summary" every 10 s from the API, and "end" when
// the session ends or the server shuts down.
func (c *Console) liveStream(w http.ResponseWriter, r *http.Request) {
	s, _ := c.sessionOf(r)
	if s == nil {
		http.Error(w, "sign in first", http.StatusUnauthorized)
		return
	}
	ch, err := c.live.subscribe(s.id)
	if err != nil {
		status := http.StatusServiceUnavailable
		if err == errLiveSessionMax {
			status = http.StatusTooManyRequests
		}
		w.Header().Set("Retry-After", "30")
		http.Error(w, err.Error(), status)
		return
	}
	defer c.live.unsubscribe(ch)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(ev string, data []byte) bool {
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev, data); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	summary := func() bool {
		b, _ := json.Marshal(c.summary(r.Context(), s))
		return send("summary", b)
	}
	if _, err := fmt.Fprint(w, "retry: 5000\n\n"); err != nil || !summary() {
		return
	}
	st := time.NewTicker(liveSummaryEvery)
	defer st.Stop()
	done := c.cfg.Sources.Done
	for {
		select {
		case <-r.Context().Done():
			return
		case <-done:
			send("end", []byte(`"the server is shutting down"`))
			return
		case b := <-ch:
			if !c.stillSignedIn(s) {
				send("end", []byte(`"your session has ended"`))
				return
			}
			if !send("stats", b) {
				return
			}
		case <-st.C:
			if !summary() {
				return
			}
		}
	}
}
