package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

// --- audit trail ---

type auditEntry struct {
	ID      string          `json:"id"`
	Time    time.Time       `json:"time"`
	Actor   string          `json:"actor"`
	Role    string          `json:"role"`
	Action  string          `json:"action"`
	Target  string          `json:"target"`
	Project string          `json:"project"`
	Detail  json.RawMessage `json:"detail"`
}

// DetailText is the entry's detail as compact JSON.
func (e auditEntry) DetailText() string {
	var b bytes.Buffer
	if json.Compact(&b, e.Detail) != nil {
		return string(e.Detail)
	}
	return b.String()
}

// TargetLink is the console page of the entry's target, if it has one.
func (e auditEntry) TargetLink() string {
	if strings.HasPrefix(e.Action, "key.") && e.Target != "" {
		return Prefix + "/keys/" + url.PathEscape(e.Target)
	}
	return ""
}

type auditResp struct {
	Entries []auditEntry `json:"entries"`
	Next    string       `json:"next"`
}

var auditFilterFields = []string{"actor", "action", "target", "from", "to"}

type auditData struct {
	Entries []auditEntry
	Next    string
	Filter  url.Values
}

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, s *session) error {
	in := r.URL.Query()
	f := newForm(in)
	q := url.Values{"limit": {pageLimit(in, 50)}}
	for _, k := range append(auditFilterFields, "cursor") {
		if v := strings.TrimSpace(in.Get(k)); v != "" {
			if k == "from" || k == "to" {
				v = datetimeLocal(v)
			}
			q.Set(k, v)
		}
	}
	var ar auditResp
	status := 200
	if err := c.call(r.Context(), s, "GET", "/v1/audit", q, nil, &ar); err != nil {
		f.fail(err, append(auditFilterFields, "cursor")...)
		status = 400
		var ae *apiError
		if errors.As(err, &ae) && ae.Status >= 500 {
			status = ae.Status
		}
	}
	v := c.viewFor(s, "Audit trail", "audit")
	v.Form, v.D = f, auditData{Entries: ar.Entries, Next: ar.Next, Filter: in}
	c.render(w, status, "audit", v)
	return nil
}

// --- leak reports ---

// leakRuleID is the rule id of leak decisions (internal/leaks.RuleID).
const leakRuleID = "leak-report"

type leakRow struct {
	D         decisionJSON
	KeyStatus string // the key's status now
}

// Done says what was done about the report.
func (l leakRow) Done() string {
	switch l.D.Action {
	case "revoke":
		return "key revoked"
	case "alert":
		return "alerted (policy: alert); the key was left working"
	}
	return l.D.Action
}

type leaksData struct {
	Acted     []leakRow
	Next      string
	Filter    url.Values
	Operator  []auditEntry
	AuditErr  string
	Decisions string // an error reading decisions
}

func (c *Console) leaksPage(w http.ResponseWriter, r *http.Request, s *session) error {
	in := r.URL.Query()
	q := url.Values{"limit": {pageLimit(in, 50)}, "rule": {leakRuleID}}
	if cur := in.Get("cursor"); cur != "" {
		q.Set("cursor", cur)
	}
	d := leaksData{Filter: in}
	var dr decisionsResp
	if err := c.call(r.Context(), s, "GET", "/v1/decisions", q, nil, &dr); err != nil {
		d.Decisions = err.Error()
	}
	d.Next = dr.Next
	status := map[string]string{}
	for _, x := range dr.Decisions {
		row := leakRow{D: x}
		if x.KeyID != "" {
			st, ok := status[x.KeyID]
			if !ok {
				var k keyJSON
				if c.call(r.Context(), s, "GET", "/v1/keys/"+url.PathEscape(x.KeyID), nil, nil, &k) == nil {
					st = k.Status
				} else {
					st = "unknown"
				}
				status[x.KeyID] = st
			}
			row.KeyStatus = st
		}
		d.Acted = append(d.Acted, row)
	}
	if in.Get("cursor") == "" {
		// Reports made by operators, false positives included.
		var ar auditResp
		if err := c.call(r.Context(), s, "GET", "/v1/audit", url.Values{"action": {"leak.report"}, "limit": {"50"}}, nil, &ar); err != nil {
			d.AuditErr = err.Error()
		}
		d.Operator = ar.Entries
	}
	v := c.viewFor(s, "Leak reports", "leaks")
	v.D = d
	c.render(w, 200, "leaks", v)
	return nil
}

// --- a key's state history ---

// historyItem is one change of a key's state: from the audit trail (a
// person or program with an admin token) or a decision that acted on it
// (a detection rule or a leak report).
type historyItem struct {
	Time   time.Time
	Change string
	By     string
	Detail string
	Link   string
}

// keyHistory is the key's changes, newest first: the key-state log keeps
// only each key's latest value, so the history is what the audit trail and
// the decisions recorded.
func (c *Console) keyHistory(r *http.Request, s *session, k keyJSON, ds []decisionJSON) ([]historyItem, error) {
	var ar auditResp
	err := c.call(r.Context(), s, "GET", "/v1/audit", url.Values{"target": {k.ID}, "limit": {"100"}}, nil, &ar)
	var out []historyItem
	for _, d := range ds {
		switch d.Action {
		case "revoke", "suspend", "throttle":
			change := d.Action
			if d.Mode != "enforce" {
				change += " (dry run: not applied)"
			}
			out = append(out, historyItem{Time: d.Time, Change: change, By: "rule " + d.RuleID, Detail: d.Reason, Link: d.Link()})
		}
	}
	// After the decisions: in a tie of milliseconds, a decision acted on
	// what an admin had done (a leak report on a key just resumed).
	for _, e := range ar.Entries {
		out = append(out, historyItem{Time: e.Time, Change: strings.TrimPrefix(e.Action, "key."), By: e.Actor, Detail: e.DetailText()})
	}
	created := false
	for _, h := range out {
		created = created || h.Change == "create"
	}
	if !created && k.CreatedAt != nil {
		by := ""
		if k.Replaces != "" {
			by = "rotation of " + k.Replaces
		}
		out = append(out, historyItem{Time: *k.CreatedAt, Change: "create", By: by})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.After(out[j].Time) })
	return out, err
}
