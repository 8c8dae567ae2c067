// Package detector is the detection role, the path that runs: Run (or
// Assemble, then Role.Run) loads the rules and builds the engine (the
// library internal/detect) with the rule reloader, the baselines and the
// profiles warm-started from stored history; the Detector consumes event
// batches from the bus, feeds them to the engine in event time, and
// carries out the decisions: every decision is published on
// keymeter.decisions and written to the store with its evidence; enforced
// revocations, suspensions and throttles become key-state changes, so
// verifiers refuse the key within bus latency; block_ip decisions reach the
// verifiers through keymeter.decisions (a network when the rule grouped by
// network).
package detector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/detect"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/store"
)

// KeyActions carries out decisions on keys (keys.Service).
type KeyActions interface {
	Revoke(ctx context.Context, id, reason string) error
	// SuspendUntil suspends the key under suspension id sid until until,
	// unless a suspension it must not replace is in force
	// (keys.ErrSuspended); ResumeSuspension lifts sid only while it is
	// the suspension in force.
	SuspendUntil(ctx context.Context, id, sid string, until time.Time) error
	ResumeSuspension(ctx context.Context, id, sid string) error
	Update(ctx context.Context, id string, p keys.UpdateParams) error
}

// Bus is what the detector needs of the bus.
type Bus interface {
	NewConsumer(ctx context.Context, cfg bus.ConsumerConfig) (bus.Consumer, error)
	bus.Decisions
}

// Config wires a Detector.
type Config struct {
	Group  string // consumer group (default "detector")
	Engine *detect.Engine
	Bus    Bus
	Store  store.DecisionStore // optional
	// Audit, if set, holds the rule-mode switches to restore at start
	// (they outlive the decisions log).
	Audit  store.AuditLog
	Keys   KeyActions // optional: without it enforce decisions are only recorded
	Logger *slog.Logger
	// OnDecision, if set, sees every decision after it was carried out.
	OnDecision func(d *keymeterv1.Decision, err error)
}

// Detector is the running role.
type Detector struct {
	cfg       Config
	log       *slog.Logger
	decisions chan *keymeterv1.Decision
	counts    Counts
	// resumed, if set (tests), sees the outcome of every expired
	// suspension's resume attempt.
	resumed func(id, sid string, err error)
}

// Counts are cumulative since start.
type Counts struct {
	Events    atomic.Uint64
	Decisions atomic.Uint64
	Revoked   atomic.Uint64
	Failed    atomic.Uint64
}

// New returns a Detector whose engine must have been built with Sink().
func New(cfg Config) (*Detector, error) {
	if cfg.Bus == nil {
		return nil, errors.New("detector: a bus is required")
	}
	if cfg.Group == "" {
		cfg.Group = "detector"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Detector{cfg: cfg, log: cfg.Logger.With("role", "detector"), decisions: make(chan *keymeterv1.Decision, 4096)}, nil
}

// Sink is the engine's sink: decisions are queued for Run's actor.
func (d *Detector) Sink() detect.Sink {
	return detect.SinkFunc(func(dec *keymeterv1.Decision) {
		select {
		case d.decisions <- dec:
		default:
			// The actor is far behind; block rather than lose a decision.
			d.decisions <- dec
		}
	})
}

// SetEngine sets the engine (built after New because it needs Sink()).
func (d *Detector) SetEngine(e *detect.Engine) { d.cfg.Engine = e }

// Counts returns the counters.
func (d *Detector) Counts() *Counts { return &d.counts }

// Run consumes until ctx ends.
func (d *Detector) Run(ctx context.Context) error {
	if d.cfg.Engine == nil {
		return errors.New("detector: no engine (SetEngine)")
	}
	cons, err := d.cfg.Bus.NewConsumer(ctx, bus.ConsumerConfig{Group: d.cfg.Group})
	if err != nil {
		return fmt.Errorf("detector: %w", err)
	}
	defer cons.Close(context.Background())
	var wg sync.WaitGroup
	// The actor outlives ctx by a bounded grace: decisions already made are
	// carried out and stored, however the shutdown came.
	actCtx, stopAct := context.WithCancel(context.WithoutCancel(ctx))
	stop := make(chan struct{})
	wg.Add(1)
	go func() { defer wg.Done(); d.act(actCtx, stop) }()
	defer func() {
		close(stop)
		t := time.AfterFunc(20*time.Second, stopAct) // the bound on shutdown
		wg.Wait()
		t.Stop()
		stopAct()
	}()

	d.restoreRuleModes(ctx)
	var eb event.Batch
	var evs []event.Event
	for ctx.Err() == nil {
		ds, err := cons.Fetch(ctx, 256, 500*time.Millisecond)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			d.log.Warn("detector: fetch failed", "err", err)
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if len(ds) == 0 {
			d.cfg.Engine.Flush()
			continue
		}
		evs = evs[:0]
		last := map[int]bus.Delivery{}
		for _, dl := range ds {
			last[dl.Partition] = dl
			if dl.Invalid != "" || event.DecodeBatch(dl.Data, &eb) != nil {
				continue // the aggregator dead-letters these
			}
			for i := range eb.Events {
				if eb.Events[i].Validate() == nil {
					evs = append(evs, eb.Events[i])
				}
			}
		}
		d.cfg.Engine.ProcessBatch(evs)
		d.counts.Events.Add(uint64(len(evs)))
		for _, dl := range last {
			if err := cons.Ack(ctx, dl); err != nil && ctx.Err() == nil {
				d.log.Warn("detector: ack failed; batches will be seen again", "err", err)
			}
		}
	}
	d.cfg.Engine.Flush()
	return nil
}

// replaySyncer is a bus that tells when the replay of the decisions log has
// caught up (natsbus).
type replaySyncer interface {
	SubscribeDecisionsSinceSynced(ctx context.Context, since time.Time, fn func([]byte)) (<-chan struct{}, error)
}

// ruleModeReplayWait bounds the wait for the decisions log's replay at
// start (a slow log must not keep the detector from working).
const ruleModeReplayWait = 30 * time.Second

// restoreRuleModes applies the rule-mode switches before the first event is
// fetched, so that a switched rule's first decision after a restart already
// has the switched mode: the audit trail's (switches older than the log's
// retention) first, then the retained decisions log's, which it then
// follows until ctx ends.
func (d *Detector) restoreRuleModes(ctx context.Context) {
	if d.cfg.Audit != nil {
		if n, err := RestoreRuleModes(ctx, d.cfg.Audit, d.cfg.Engine, d.log); err != nil {
			d.log.Warn("detector: rule-mode switches not read from the audit trail", "err", err)
		} else if n > 0 {
			d.log.Info("detector: rule-mode switches restored from the audit trail", "rules", n)
		}
	}
	apply := func(data []byte) { ApplyRuleMode(d.cfg.Engine, data, d.log) }
	rs, ok := d.cfg.Bus.(replaySyncer)
	if !ok {
		if err := FollowRuleModes(ctx, d.cfg.Bus, d.cfg.Engine, d.log); err != nil && ctx.Err() == nil {
			d.log.Warn("detector: not following rule-mode overrides", "err", err)
		}
		return
	}
	caughtUp, err := rs.SubscribeDecisionsSinceSynced(ctx, time.Unix(0, 0), apply)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn("detector: not following rule-mode overrides", "err", err)
		}
		return
	}
	t := time.NewTimer(ruleModeReplayWait)
	defer t.Stop()
	select {
	case <-caughtUp:
	case <-ctx.Done():
	case <-t.C:
		d.log.Warn("detector: the decisions log's replay is slow; fetching events before all rule-mode overrides are applied")
	}
}

// act carries out decisions one by one and writes them to the store in
// small batches. Once stop is closed it finishes the queued decisions and
// stores what is pending, within ctx (which the caller bounds).
func (d *Detector) act(ctx context.Context, stop <-chan struct{}) {
	var pending []store.Decision
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	flush := func() {
		if len(pending) == 0 || d.cfg.Store == nil {
			pending = pending[:0]
			return
		}
		if err := d.cfg.Store.WriteDecisions(ctx, pending); err != nil {
			d.log.Warn("detector: cannot store decisions; keeping them for the next try", "n", len(pending), "err", err)
			if len(pending) > 100_000 {
				pending = pending[len(pending)-100_000:]
			}
			return
		}
		pending = pending[:0]
	}
	handle := func(dec *keymeterv1.Decision) {
		err := d.carryOut(ctx, dec)
		d.counts.Decisions.Add(1)
		if err != nil {
			d.counts.Failed.Add(1)
			d.log.Warn("detector: decision not fully carried out", "rule", dec.GetRuleId(), "action", detect.ActionName(dec.GetAction()), "key_id", dec.GetKeyId(), "err", err)
		}
		pending = append(pending, toStore(dec))
		if len(pending) >= 500 {
			flush()
		}
		if d.cfg.OnDecision != nil {
			d.cfg.OnDecision(dec, err)
		}
	}
	for {
		select {
		case <-stop:
			for {
				select {
				case dec := <-d.decisions:
					if ctx.Err() == nil {
						handle(dec)
						continue
					}
					d.log.Error("detector: shutdown grace over; decision not carried out", "rule", dec.GetRuleId(), "key_id", dec.GetKeyId())
					continue
				default:
				}
				break
			}
			flush()
			return
		case <-tick.C:
			flush()
		case dec := <-d.decisions:
			handle(dec)
		}
	}
}

func (d *Detector) carryOut(ctx context.Context, dec *keymeterv1.Decision) error {
	raw, err := proto.Marshal(dec)
	if err != nil {
		return err
	}
	pubKey := dec.GetKeyId()
	if pubKey == "" {
		pubKey = dec.GetGroup()
	}
	// Publishing (verifiers' block lists, audit) and acting on the key are
	// independent: a bus hiccup must not cancel a revocation.
	var pubErr error
	for attempt := 0; attempt < 3; attempt++ {
		if pubErr = d.cfg.Bus.PublishDecision(ctx, pubKey, raw); pubErr == nil {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
	}
	if pubErr != nil {
		pubErr = fmt.Errorf("publish decision: %w", pubErr)
	}
	if dec.GetMode() != keymeterv1.Mode_MODE_ENFORCE || d.cfg.Keys == nil {
		return pubErr
	}
	id := dec.GetKeyId()
	switch dec.GetAction() {
	case keymeterv1.Action_ACTION_REVOKE, keymeterv1.Action_ACTION_SUSPEND, keymeterv1.Action_ACTION_THROTTLE:
		if id == "" {
			return fmt.Errorf("rule %s: %s needs a key, the group %q has none", dec.GetRuleId(), detect.ActionName(dec.GetAction()), dec.GetGroup())
		}
	default:
		return pubErr
	}
	reason := fmt.Sprintf("rule %s v%d: %s", dec.GetRuleId(), dec.GetRuleVersion(), dec.GetReason())
	switch dec.GetAction() {
	case keymeterv1.Action_ACTION_REVOKE:
		err = d.cfg.Keys.Revoke(ctx, id, reason)
		if err == nil {
			d.counts.Revoked.Add(1)
			d.log.Warn("key revoked by detection", "key_id", id, "rule", dec.GetRuleId())
		}
	case keymeterv1.Action_ACTION_SUSPEND:
		// The suspension is recorded in the key state under the decision's
		// id: the timer lifts it only while it is the one in force, never
		// a person's.
		sid := "decision:" + dec.GetId()
		var until time.Time // no duration: until a person resumes it
		dur := time.Duration(dec.GetDurationMs()) * time.Millisecond
		if dur > 0 {
			until = time.Unix(0, dec.GetTimeUnixNano()).Add(dur)
		}
		err = d.cfg.Keys.SuspendUntil(ctx, id, sid, until)
		switch {
		case err == nil && dur > 0:
			d.resumeAfter(id, sid, until, dec.GetRuleId())
		case errors.Is(err, keys.ErrSuspended):
			err = nil // a person's suspension, or a longer one, stays in force
		}
	case keymeterv1.Action_ACTION_THROTTLE:
		rate := dec.GetThrottlePerS()
		until := time.Now().Add(time.Duration(dec.GetDurationMs()) * time.Millisecond)
		err = d.cfg.Keys.Update(ctx, id, keys.UpdateParams{ThrottlePerS: &rate, ThrottleUntil: &until})
	}
	if errors.Is(err, keys.ErrConflict) || errors.Is(err, keys.ErrNotFound) {
		err = nil // already revoked, or not a key this deployment knows
	}
	return errors.Join(pubErr, err)
}

// resumeAfter lifts a detection's suspension sid when it expires, if it is
// still the suspension in force (keys.Service.ResumeSuspension checks and
// writes with compare-and-set). The timer lives in this process: a
// suspension whose detector restarted before it expired stays until a
// person resumes the key.
func (d *Detector) resumeAfter(id, sid string, until time.Time, rule string) {
	time.AfterFunc(time.Until(until), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := d.cfg.Keys.ResumeSuspension(ctx, id, sid)
		if d.resumed != nil {
			defer d.resumed(id, sid, err)
		}
		switch {
		case err == nil:
			d.log.Info("detection suspension expired; key resumed", "key_id", id, "rule", rule)
		case errors.Is(err, keys.ErrConflict), errors.Is(err, keys.ErrNotFound):
			// revoked, resumed, or suspended again (by a person or a later
			// decision) meanwhile: that suspension stays
		default:
			d.log.Warn("detector: cannot resume a key whose suspension expired", "key_id", id, "err", err)
		}
	})
}

func toStore(dec *keymeterv1.Decision) store.Decision {
	ev, _ := json.Marshal(map[string]any{"figures": dec.GetFigures(), "sample_event_ids": dec.GetSampleEventIds(),
		"throttle_per_s": dec.GetThrottlePerS(), "duration_ms": dec.GetDurationMs(), "severity": dec.GetSeverity()})
	return store.Decision{
		ID: dec.GetId(), Time: time.Unix(0, dec.GetTimeUnixNano()).UTC(), RuleID: dec.GetRuleId(), RuleVersion: dec.GetRuleVersion(),
		Mode: detect.ModeName(dec.GetMode()), Action: detect.ActionName(dec.GetAction()), Project: dec.GetProject(),
		KeyID: dec.GetKeyId(), ClientIP: dec.GetClientIp(), GroupKey: dec.GetGroup(), Reason: dec.GetReason(), Evidence: string(ev),
	}
}
