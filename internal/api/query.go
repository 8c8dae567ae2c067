package api

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/billing"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/keys"
	"github.com/keymeter/keymeter/internal/leaks"
	"github.com/keymeter/keymeter/internal/store"
)

// UsagePointJSON is one bucket of a usage series.
type UsagePointJSON struct {
	Start     time.Time `json:"start"`
	Outcome   string    `json:"outcome,omitempty"`
	Route     string    `json:"route,omitempty"`
	Country   string    `json:"country,omitempty"`
	Requests  uint64    `json:"requests"`
	Allowed   uint64    `json:"allowed"`
	BytesIn   uint64    `json:"bytes_in"`
	BytesOut  uint64    `json:"bytes_out"`
	CostUnits uint64    `json:"cost_units"`
	UniqueIPs uint64    `json:"unique_ips"`
	Countries uint64    `json:"countries"`
}

// UsageResponse is the answer of GET /v1/usage.
type UsageResponse struct {
	Granularity string           `json:"granularity"`
	From        time.Time        `json:"from"`
	To          time.Time        `json:"to"`
	Points      []UsagePointJSON `json:"points"`
}

func (s *Server) usage(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Usage == nil {
		return unavailable("the usage store")
	}
	v, err := queryParams(r, "key", "project", "from", "to", "granularity", "group_by")
	if err != nil {
		return err
	}
	if err := checkFilters(v, "key", "project"); err != nil {
		return err
	}
	from, err := timeParam(v, "from")
	if err != nil {
		return err
	}
	to, err := timeParam(v, "to")
	if err != nil {
		return err
	}
	// Default window: the last 30 days, by day.
	if to.IsZero() {
		to = time.Now().UTC().Add(time.Minute).Truncate(time.Minute)
	}
	if from.IsZero() {
		from = to.AddDate(0, 0, -30)
	}
	v.Set("from", from.Format(time.RFC3339Nano))
	v.Set("to", to.Format(time.RFC3339Nano))
	if v.Get("granularity") == "" {
		v.Set("granularity", "day")
	}
	q, err := store.ParseUsageQuery(v)
	if err != nil {
		return err
	}
	out := UsageResponse{Granularity: string(q.Granularity), From: q.From, To: q.To, Points: []UsagePointJSON{}}
	if q.From.Before(q.To) {
		pts, err := s.cfg.Usage.Usage(r.Context(), q)
		if err != nil {
			return err
		}
		for _, p := range pts {
			out.Points = append(out.Points, UsagePointJSON(p))
		}
	}
	writeJSON(w, 200, out)
	return nil
}

// checkFilters bounds the length of free-text filters.
func checkFilters(v url.Values, fields ...string) error {
	for _, f := range fields {
		if err := checkLen(f, v.Get(f), 0, maxFilterLen); err != nil {
			return err
		}
	}
	return nil
}

// LogsResponse is a page of events, newest first.
type LogsResponse struct {
	Events []event.Event `json:"events"`
	Next   string        `json:"next,omitempty"`
}

func (s *Server) logs(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Logs == nil {
		return unavailable("the log store")
	}
	v, err := queryParams(r, store.LogFields()...)
	if err != nil {
		return err
	}
	if err := checkFilters(v, "key", "project", "route"); err != nil {
		return err
	}
	// The API takes RFC 3339 times only (the CLI also takes durations and
	// Unix seconds, and sends RFC 3339).
	for _, f := range []string{"from", "to"} {
		t, err := timeParam(v, f)
		if err != nil {
			return err
		}
		if !t.IsZero() {
			v.Set(f, t.Format(time.RFC3339Nano))
		}
	}
	if v.Get("key") == "" && v.Get("from") == "" && v.Get("cursor") == "" {
		// The table is ordered by key: a search without one reads the
		// whole project, so it is bounded to the last day unless asked.
		v.Set("from", time.Now().UTC().Add(-24*time.Hour).Format(time.RFC3339))
	}
	q, err := store.ParseLogQuery(v)
	if err != nil {
		return err
	}
	page := store.LogPage{}
	if q.From.IsZero() || q.To.IsZero() || q.From.Before(q.To) {
		if page, err = s.cfg.Logs.Logs(r.Context(), q); err != nil {
			return err
		}
	}
	if page.Events == nil {
		page.Events = []event.Event{}
	}
	writeJSON(w, 200, LogsResponse{Events: page.Events, Next: page.Next})
	return nil
}

// DecisionJSON is one detection decision with its evidence.
type DecisionJSON struct {
	ID          string    `json:"id"`
	Time        time.Time `json:"time"`
	RuleID      string    `json:"rule_id"`
	RuleVersion uint32    `json:"rule_version"`
	Mode        string    `json:"mode"`
	Action      string    `json:"action"`
	Project     string    `json:"project,omitempty"`
	KeyID       string    `json:"key_id,omitempty"`
	ClientIP    string    `json:"client_ip,omitempty"`
	Group       string    `json:"group,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	Evidence    any       `json:"evidence,omitempty"`
}

func (s *Server) decisions(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Decision == nil {
		return unavailable("the decision store")
	}
	v, err := queryParams(r, "project", "key", "rule", "from", "to", "limit", "cursor")
	if err != nil {
		return err
	}
	if err := checkFilters(v, "project", "key", "rule"); err != nil {
		return err
	}
	pg, err := parseListPage(v)
	if err != nil {
		return err
	}
	q := store.DecisionQuery{Project: v.Get("project"), KeyID: v.Get("key"), RuleID: v.Get("rule"),
		From: pg.From, To: pg.To, Limit: pg.fetch(), Cursor: pg.Cursor}
	var ds []store.Decision
	if !pg.emptyRange() {
		if ds, err = s.cfg.Decision.Decisions(r.Context(), q); err != nil {
			return err
		}
	}
	limit := pg.Limit
	out := DecisionList{Decisions: make([]DecisionJSON, 0, len(ds))}
	if len(ds) > limit {
		ds = ds[:limit]
		out.Next = store.DecisionCursor(ds[limit-1])
	}
	for _, d := range ds {
		dj := DecisionJSON{ID: d.ID, Time: d.Time, RuleID: d.RuleID, RuleVersion: d.RuleVersion, Mode: d.Mode, Action: d.Action,
			Project: d.Project, KeyID: d.KeyID, ClientIP: d.ClientIP, Group: d.GroupKey, Reason: d.Reason}
		if d.Evidence != "" {
			dj.Evidence = rawJSON(d.Evidence)
		}
		out.Decisions = append(out.Decisions, dj)
	}
	writeJSON(w, 200, out)
	return nil
}

// DecisionList is the answer of GET /v1/decisions, newest first.
type DecisionList struct {
	Decisions []DecisionJSON `json:"decisions"`
	Next      string         `json:"next,omitempty"`
}

type rawJSON string

func (r rawJSON) MarshalJSON() ([]byte, error) { return []byte(r), nil }

// Billing produces the line items of a period.
type Billing interface {
	// Export writes the period's line items in format (csv or json); it
	// never writes to the store.
	Export(ctx context.Context, period string, format string, w io.Writer) error
	// CloseExport closes a period that is due (billing.ErrNotDue
	// otherwise) and writes its export as Export does.
	CloseExport(ctx context.Context, period string, format string, w io.Writer) error
}

// periodRe is a billing period as the spec states it: a month of the
// years keys accept.
var periodRe = regexp.MustCompile(`^(197[1-9]|19[89][0-9]|2[01][0-9][0-9]|22[0-5][0-9]|226[01])-(0[1-9]|1[0-2])$`)

func (s *Server) billing(w http.ResponseWriter, r *http.Request) error {
	return s.billingExport(w, r, false)
}

// closeBilling closes a period (admin): reads never write.
func (s *Server) closeBilling(w http.ResponseWriter, r *http.Request) error {
	return s.billingExport(w, r, true)
}

func (s *Server) billingExport(w http.ResponseWriter, r *http.Request, closing bool) error {
	if s.cfg.Billing == nil {
		return unavailable("billing")
	}
	v, err := queryParams(r, "format")
	if err != nil {
		return err
	}
	format := v.Get("format")
	if format == "" {
		format = "json"
	}
	if format != "json" && format != "csv" {
		return badRequest("format", "format %q: accepted values are csv, json", format)
	}
	period := r.PathValue("period")
	if !periodRe.MatchString(period) {
		return badRequest("period", "period %q: want a month such as 2026-11 (years %d to %d)", period, keys.MinYear, keys.MaxYear)
	}
	// Built whole before the first byte goes out, so an error is a clean
	// error response, never half an export.
	var buf bytes.Buffer
	if closing {
		err = s.audited(r, "billing.close", period, nil, s.cfg.Billing.CloseExport(r.Context(), period, format, &buf))
	} else {
		err = s.cfg.Billing.Export(r.Context(), period, format, &buf)
	}
	if errors.Is(err, billing.ErrNotDue) {
		return &Error{Status: 409, Code: "conflict", Field: "period", Message: err.Error()}
	}
	if err != nil {
		return err
	}
	if format == "csv" {
		w.Header().Set("Content-Type", "text/csv")
	} else {
		w.Header().Set("Content-Type", "application/json")
	}
	_, _ = w.Write(buf.Bytes())
	return nil
}

// RuleLister lists the loaded detection rules and their counters.
type RuleLister interface {
	RuleStatuses() any
}

func (s *Server) rules(w http.ResponseWriter, _ *http.Request) error {
	if s.cfg.Rules == nil {
		return unavailable("the detector")
	}
	writeJSON(w, 200, map[string]any{"rules": s.cfg.Rules.RuleStatuses()})
	return nil
}

// EventSink takes usage events posted by third parties.
type EventSink interface {
	Accept(ctx context.Context, events []event.Event) error
}

// EventsRequest is the body of POST /v1/events: a JSON array of events, or
// one event, in the JSON form of schemas/usage-event.schema.json. Events
// older than the store's raw-event retention are dropped and listed in the
// answer (they would never be searchable); the others are accepted.
func (s *Server) events(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Events == nil {
		return unavailable("event intake")
	}
	body, err := readJSONBody(w, r, 8<<20)
	if err != nil {
		return err
	}
	evs, err := decodeEvents(body)
	if err != nil {
		return err
	}
	out := EventsResponse{}
	if days := s.retentionDays(r.Context()); days > 0 {
		oldest := time.Now().Add(-time.Duration(days) * 24 * time.Hour)
		kept := evs[:0]
		for i, e := range evs {
			if e.Time.Before(oldest) {
				out.Dropped = append(out.Dropped, DroppedEvent{Index: i, Field: "time",
					Reason: fmt.Sprintf("older than the store's retention of raw events (%d days): never searchable", days)})
				continue
			}
			kept = append(kept, e)
		}
		evs = kept
	}
	if len(evs) > 0 {
		if err := s.cfg.Events.Accept(r.Context(), evs); err != nil {
			return err
		}
	}
	out.Accepted = len(evs)
	writeJSON(w, http.StatusAccepted, out)
	return nil
}

// retentionDays is the store's raw-event retention, read at most once a
// minute; 0 when unknown.
func (s *Server) retentionDays(ctx context.Context) int {
	if s.cfg.Retention == nil {
		return 0
	}
	s.retMu.Lock()
	defer s.retMu.Unlock()
	if time.Since(s.retAt) > time.Minute {
		if d, err := s.cfg.Retention(ctx); err == nil {
			s.retDays, s.retAt = d, time.Now()
		} else {
			s.log.Warn("api: retention unknown; events are not checked against it", "err", err)
		}
	}
	return s.retDays
}

// LeakHandler handles leak reports (leaks.Handler).
type LeakHandler interface {
	http.Handler
	HandleHash(ctx context.Context, sum [32]byte, source, url string) leaks.Label
}

// LeakHashRequest is the body of POST /v1/leaks/hash.
type LeakHashRequest struct {
	TokenSHA256 string `json:"token_sha256"`
	Source      string `json:"source,omitempty"`
	URL         string `json:"url,omitempty"`
}

func (s *Server) leakHash(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Leaks == nil {
		return unavailable("leak reports")
	}
	var req LeakHashRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	b, err := hex.DecodeString(req.TokenSHA256)
	if err != nil || len(b) != 32 || strings.ToLower(req.TokenSHA256) != req.TokenSHA256 {
		return badRequest("token_sha256", "token_sha256: want the 64 lower-case hex characters of the secret's SHA-256")
	}
	if err := checkLen("source", req.Source, 0, maxLeakFieldLen); err != nil {
		return err
	}
	if err := checkLen("url", req.URL, 0, maxLeakFieldLen); err != nil {
		return err
	}
	var sum [32]byte
	copy(sum[:], b)
	if req.Source == "" {
		req.Source = "operator"
	}
	l := s.cfg.Leaks.HandleHash(r.Context(), sum, req.Source, req.URL)
	_ = s.audited(r, "leak.report", "sha256:"+req.TokenSHA256[:12], map[string]any{"source": req.Source, "url": req.URL, "label": l.Label, "duplicate": l.Duplicate}, nil)
	writeJSON(w, 200, l)
	return nil
}

func (s *Server) leaks(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Leaks == nil {
		writeError(w, &Error{Status: 503, Code: "unavailable", Message: "leak reports are not configured on this server"})
		return
	}
	s.leakReport(w, r)
}

// listPage holds the from, to, limit and cursor parameters of a
// newest-first list paged by cursor (decisions, the audit trail).
type listPage struct {
	From, To time.Time
	Limit    int // as asked
	Cursor   string
}

func parseListPage(v url.Values) (listPage, error) {
	var pg listPage
	var err error
	if pg.From, err = timeParam(v, "from"); err != nil {
		return pg, err
	}
	if pg.To, err = timeParam(v, "to"); err != nil {
		return pg, err
	}
	if pg.Limit, err = intParam(v, "limit", 1, 10000, 100); err != nil {
		return pg, err
	}
	pg.Cursor = v.Get("cursor")
	if pg.Cursor != "" && !store.ValidCursor(pg.Cursor) {
		return pg, badRequest("cursor", "cursor %q is not one this server issued (the next of a previous page)", pg.Cursor)
	}
	return pg, nil
}

// fetch is the limit to ask the store for: one more than asked tells
// whether there is a next page.
func (pg listPage) fetch() int {
	if pg.Limit < 10000 {
		return pg.Limit + 1
	}
	return pg.Limit
}

// emptyRange reports a range with from not before to: nothing to read.
func (pg listPage) emptyRange() bool {
	return !pg.From.IsZero() && !pg.To.IsZero() && !pg.From.Before(pg.To)
}
