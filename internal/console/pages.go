package console

import (
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// view is what every page template gets.
type view struct {
	Title string
	Nav   string
	User  *viewSession
	Flash string
	Err   *apiError // an error for the whole page
	Form  *form
	D     any
}

type viewSession struct {
	Role  string
	Admin bool
	CSRF  string
}

func (v *view) HXHeaders() string {
	if v.User == nil {
		return ""
	}
	b, _ := json.Marshal(map[string]string{"X-CSRF-Token": v.User.CSRF})
	return string(b)
}

// form is a submitted form: what was typed (kept on error) and errors by
// field; General is an error naming no field of the form.
type form struct {
	Values  url.Values
	Errors  map[string]string
	General string
}

func newForm(v url.Values) *form { return &form{Values: v, Errors: map[string]string{}} }

func (f *form) Get(k string) string {
	if f == nil {
		return ""
	}
	return f.Values.Get(k)
}

func (f *form) Error(k string) string {
	if f == nil {
		return ""
	}
	return f.Errors[k]
}

// fail puts an API error next to its field (one of fields), or on top.
func (f *form) fail(err error, fields ...string) {
	var ae *apiError
	if !errors.As(err, &ae) {
		f.General = err.Error()
		return
	}
	// "allowed_cidrs[2]" (or a dotted path): the form field.
	field := ae.Field
	if i := strings.LastIndex(field, "."); i >= 0 {
		field = field[i+1:]
	}
	if i := strings.Index(field, "["); i >= 0 {
		field = field[:i]
	}
	if field == "" {
		// Some service errors name the field only in the message.
		for _, k := range fields {
			if strings.Contains(ae.Message, k) {
				field = k
				break
			}
		}
	}
	for _, k := range fields {
		if k == field {
			f.Errors[k] = ae.Message
			return
		}
	}
	f.General = ae.Message
}

// inputArgs are the arguments of the "input" template.
type inputArgs struct {
	F                       *form
	Name, Label, Type, Help string
}

var funcs = template.FuncMap{
	"time": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			if v.IsZero() {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05Z")
		case *time.Time:
			if v == nil || v.IsZero() {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05Z")
		case string:
			if tt, err := time.Parse(time.RFC3339Nano, v); err == nil {
				return tt.UTC().Format("2006-01-02 15:04:05.000Z")
			}
			return v
		}
		return fmt.Sprint(t)
	},
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
	"join":    strings.Join,
	"json": func(v any) string {
		b, _ := json.MarshalIndent(v, "", "  ")
		return string(b)
	},
	"query": func(kv ...string) template.URL {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] != "" {
				v.Set(kv[i], kv[i+1])
			}
		}
		return template.URL(v.Encode())
	},
	"withCursor": func(v url.Values, cursor string) template.URL {
		n := url.Values{}
		for k, vs := range v {
			if k != "cursor" && k != "live" && len(vs) > 0 && vs[0] != "" {
				n.Set(k, vs[0])
			}
		}
		n.Set("cursor", cursor)
		return template.URL(n.Encode())
	},
	"pathEscape": url.PathEscape,
	"slice3":     func(a, b, c string) []string { return []string{a, b, c} },
	"args": func(f *form, name, label, typ, help string) inputArgs {
		return inputArgs{F: f, Name: name, Label: label, Type: typ, Help: help}
	},
	"eq1": func(a, b string) bool { return a == b },
}

func (c *Console) parseTemplates() error {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return err
	}
	c.pages = map[string]*template.Template{}
	for _, n := range names {
		base := path.Base(n)
		if base == "layout.html" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return fmt.Errorf("console: template %s: %w", n, err)
		}
		c.pages[strings.TrimSuffix(base, ".html")] = t
	}
	return nil
}

func (c *Console) render(w http.ResponseWriter, status int, page string, v *view) {
	t := c.pages[page]
	var buf strings.Builder
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		c.log.Error("console: render", "page", page, "err", err)
		http.Error(w, "internal error", 500)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(buf.String()))
}

func (c *Console) viewFor(s *session, title, nav string) *view {
	v := &view{Title: title, Nav: nav}
	if s != nil {
		v.User = &viewSession{Role: s.role, Admin: s.role == "admin", CSRF: s.csrf}
	}
	return v
}

type handler func(w http.ResponseWriter, r *http.Request, s *session) error

// page serves a signed-in GET page.
func (c *Console) page(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, expired := c.sessionOf(r)
		if s == nil {
			q := url.Values{"next": {r.URL.RequestURI()}}
			if expired {
				q.Set("expired", "1")
			}
			c.redirect(w, r, Prefix+"/login?"+q.Encode())
			return
		}
		if err := h(w, r, s); err != nil {
			c.fail(w, s, err)
		}
	})
}

// write serves a signed-in POST: the CSRF token is checked before anything
// else; the API then applies its own role rules to the session's token.
func (c *Console) write(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		s, _ := c.sessionOf(r)
		if s == nil {
			v := c.viewFor(nil, "Signed out", "")
			v.Err = &apiError{Status: 401, Code: "unauthenticated", Message: "Your session has ended. Sign in again; nothing was changed."}
			c.render(w, http.StatusUnauthorized, "error", v)
			return
		}
		if !csrfOK(r, s) {
			v := c.viewFor(s, "Refused", "")
			v.Err = &apiError{Status: 403, Code: "csrf", Message: "The form's CSRF token is missing or wrong: reload the page and try again. Nothing was changed."}
			c.render(w, http.StatusForbidden, "error", v)
			return
		}
		if err := h(w, r, s); err != nil {
			c.fail(w, s, err)
		}
	})
}

func (c *Console) redirect(w http.ResponseWriter, r *http.Request, to string) {
	if r.Header.Get("HX-Request") != "" {
		w.Header().Set("HX-Redirect", to)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

func (c *Console) fail(w http.ResponseWriter, s *session, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		c.log.Error("console: page failed", "err", err)
		ae = &apiError{Status: 500, Code: "internal", Message: "internal error"}
	}
	v := c.viewFor(s, "Error", "")
	v.Err = ae
	c.render(w, ae.Status, "error", v)
}

func (c *Console) routes() {
	m := c.mux
	m.HandleFunc("GET "+Prefix+"/assets/{name}", c.asset)
	m.HandleFunc("GET "+Prefix+"/login", c.loginPage)
	m.HandleFunc("POST "+Prefix+"/login", c.login)
	m.Handle("POST "+Prefix+"/logout", c.write(c.logout))
	m.HandleFunc("GET "+Prefix, func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, Prefix+"/", http.StatusFound) })
	m.Handle("GET "+Prefix+"/{$}", c.page(c.overview))
	m.Handle("GET "+Prefix+"/keys", c.page(c.keysPage))
	m.Handle("GET "+Prefix+"/keys/new", c.page(c.newKeyPage))
	m.Handle("POST "+Prefix+"/keys", c.write(c.createKey))
	m.Handle("GET "+Prefix+"/keys/{id}", c.page(c.keyPage))
	m.Handle("POST "+Prefix+"/keys/{id}/{action}", c.write(c.keyAction))
	m.Handle("GET "+Prefix+"/logs", c.page(c.logsPage))
	m.Handle("GET "+Prefix+"/decisions", c.page(c.decisionsPage))
	m.Handle("GET "+Prefix+"/decisions/{id}", c.page(c.decisionPage))
	m.Handle("GET "+Prefix+"/rules", c.page(c.rulesPage))
	m.Handle("POST "+Prefix+"/rules/{id}/mode", c.write(c.ruleMode))
	m.Handle("GET "+Prefix+"/backtest", c.page(c.backtestPage))
	m.HandleFunc("GET "+Prefix+"/live", c.liveStream)
	m.Handle("POST "+Prefix+"/backtest", c.write(c.runBacktest))
	m.Handle("GET "+Prefix+"/audit", c.page(c.auditPage))
	m.Handle("GET "+Prefix+"/leaks", c.page(c.leaksPage))
	m.Handle("GET "+Prefix+"/usage", c.page(c.usagePage))
	m.Handle("GET "+Prefix+"/billing/{file}", c.page(c.billingFile))
	m.Handle(Prefix+"/", c.page(func(w http.ResponseWriter, r *http.Request, s *session) error {
		return &apiError{Status: 404, Code: "not_found", Message: "No console page at " + r.URL.Path}
	}))
}

func (c *Console) asset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	b, err := assetFS.ReadFile("assets/" + name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	switch path.Ext(name) {
	case ".js":
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	case ".css":
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
	}
	w.Header().Set("Cache-Control", "public, max-age=3600")
	_, _ = w.Write(b)
}

// --- sign-in ---

type loginData struct {
	Next, Nonce, Notice string
}

func safeNext(n string) string {
	if strings.HasPrefix(n, Prefix+"/") && !strings.HasPrefix(n, "//") && !strings.ContainsAny(n, "\\\r\n") {
		return n
	}
	return Prefix + "/"
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if s, _ := c.sessionOf(r); s != nil {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	c.renderLogin(w, r, http.StatusOK, nil)
}

func (c *Console) renderLogin(w http.ResponseWriter, r *http.Request, status int, f *form) {
	// Login CSRF: a double-submitted nonce (cookie and form field).
	nonce := randomToken()
	c.setCookie(w, r, loginCookieName, nonce, 900)
	d := loginData{Next: safeNext(r.FormValue("next")), Nonce: nonce}
	switch {
	case r.FormValue("expired") != "":
		d.Notice = "Your session expired; sign in again."
	case r.FormValue("signed_out") != "":
		d.Notice = "You are signed out."
	}
	v := c.viewFor(nil, "Sign in", "")
	v.Form, v.D = f, d
	c.render(w, status, "login", v)
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	f := newForm(url.Values{})
	ck, err := r.Cookie(loginCookieName)
	if err != nil || r.PostFormValue("nonce") == "" || differ(ck.Value, r.PostFormValue("nonce")) {
		f.General = "The sign-in form expired or came from elsewhere; please try again."
		c.renderLogin(w, r, http.StatusForbidden, f)
		return
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	if token == "" {
		f.Errors["token"] = "token is required: paste an admin token (role admin or read)"
		c.renderLogin(w, r, http.StatusBadRequest, f)
		return
	}
	s := c.newSession(token)
	if s == nil {
		f.Errors["token"] = "unknown admin token (the API knows no token with this value)"
		c.renderLogin(w, r, http.StatusUnauthorized, f)
		return
	}
	c.setCookie(w, r, loginCookieName, "", -1)
	c.setCookie(w, r, cookieName, s.id, 0)
	c.log.Info("console: signed in", "token_role", s.role)
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

// differ reports whether a and b differ (constant time).
func differ(a, b string) bool { return !constEq(a, b) }

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) error {
	c.endSession(s)
	c.setCookie(w, r, cookieName, "", -1)
	c.redirect(w, r, Prefix+"/login?signed_out=1")
	return nil
}

// --- keys ---

type keyJSON struct {
	ID            string            `json:"id"`
	Project       string            `json:"project"`
	Name          string            `json:"name"`
	Owner         string            `json:"owner"`
	Env           string            `json:"env"`
	DisplayPrefix string            `json:"display_prefix"`
	Status        string            `json:"status"`
	CreatedAt     *time.Time        `json:"created_at"`
	ExpiresAt     *time.Time        `json:"expires_at"`
	RevokedAt     *time.Time        `json:"revoked_at"`
	RevokeReason  string            `json:"revoke_reason"`
	Scopes        []string          `json:"scopes"`
	AllowedCIDRs  []string          `json:"allowed_cidrs"`
	RateLimitPerS float64           `json:"rate_limit_per_s"`
	RateBurst     uint32            `json:"rate_limit_burst"`
	MonthlyQuota  uint64            `json:"monthly_quota"`
	QuotaState    string            `json:"quota_state"`
	QuotaUsed     uint64            `json:"quota_used"`
	Metadata      map[string]string `json:"metadata"`
	Replaces      string            `json:"replaces"`
	GraceUntil    *time.Time        `json:"grace_until"`
	ThrottlePerS  float64           `json:"throttle_per_s"`
	ThrottleUntil *time.Time        `json:"throttle_until"`
	Version       uint64            `json:"version"`
}

type keyList struct {
	Keys []keyJSON `json:"keys"`
	Next string    `json:"next"`
}

type keysData struct {
	Filter  url.Values
	Keys    []keyJSON
	Next    string
	Scanned int
}

const keyPageSize = 50

// pageLimit is the page size asked for (?limit=, 1-500) or def.
func pageLimit(in url.Values, def int) string {
	if n, err := strconv.Atoi(in.Get("limit")); err == nil && n >= 1 && n <= 500 {
		return strconv.Itoa(n)
	}
	return strconv.Itoa(def)
}

// keysPage lists keys. The API filters by project and status; search (id,
// name, owner, prefix), owner and env are applied here over the API's
// pages, scanning a bounded number of them per console page.
func (c *Console) keysPage(w http.ResponseWriter, r *http.Request, s *session) error {
	in := r.URL.Query()
	f := newForm(in)
	size, _ := strconv.Atoi(pageLimit(in, keyPageSize))
	q := url.Values{"limit": {strconv.Itoa(size)}}
	for _, k := range []string{"project", "status", "cursor"} {
		if v := in.Get(k); v != "" {
			q.Set(k, v)
		}
	}
	search := strings.ToLower(strings.TrimSpace(in.Get("q")))
	owner, env := in.Get("owner"), in.Get("env")
	if search != "" || owner != "" || env != "" {
		q.Set("limit", strconv.Itoa(max(size, 200))) // filtered here: read more per API page
	}
	d := keysData{Filter: in, Keys: []keyJSON{}}
	for range 20 {
		var page keyList
		if err := c.call(r.Context(), s, "GET", "/v1/keys", q, nil, &page); err != nil {
			f.fail(err, "project", "status", "cursor")
			break
		}
		for _, k := range page.Keys {
			d.Scanned++
			if owner != "" && k.Owner != owner || env != "" && k.Env != env {
				continue
			}
			if search != "" && !strings.Contains(strings.ToLower(k.ID+" "+k.Name+" "+k.Owner+" "+k.DisplayPrefix), search) {
				continue
			}
			d.Keys = append(d.Keys, k)
		}
		d.Next = page.Next
		if page.Next == "" || len(d.Keys) >= size {
			break
		}
		q.Set("cursor", page.Next)
	}
	v := c.viewFor(s, "Keys", "keys")
	v.Form, v.D = f, d
	status := 200
	if len(f.Errors) > 0 || f.General != "" {
		status = 400
	}
	c.render(w, status, "keys", v)
	return nil
}

var createFields = []string{"project", "name", "owner", "env", "scopes", "allowed_cidrs", "rate_limit_per_s", "rate_limit_burst", "monthly_quota", "expires_at"}

func (c *Console) newKeyPage(w http.ResponseWriter, r *http.Request, s *session) error {
	v := c.viewFor(s, "New key", "keys")
	v.Form = newForm(url.Values{"project": {r.URL.Query().Get("project")}})
	c.render(w, 200, "key_new", v)
	return nil
}

// number passes what was typed to the API as a JSON number when it is one
// and as a string otherwise, so the API's own type error names the field.
func number(s string) any {
	s = strings.TrimSpace(s)
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return json.Number(s)
	}
	return s
}

func list(s string) []string {
	var out []string
	for _, p := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' }) {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

type createdData struct {
	Secret string
	Key    keyJSON
}

func (c *Console) createKey(w http.ResponseWriter, r *http.Request, s *session) error {
	_ = r.ParseForm()
	f := newForm(r.PostForm)
	body := map[string]any{}
	for _, k := range []string{"project", "name", "owner", "env"} {
		if v := strings.TrimSpace(r.PostFormValue(k)); v != "" {
			body[k] = v
		}
	}
	for _, k := range []string{"scopes", "allowed_cidrs"} {
		if v := list(r.PostFormValue(k)); len(v) > 0 {
			body[k] = v
		}
	}
	for _, k := range []string{"rate_limit_per_s", "rate_limit_burst", "monthly_quota"} {
		if v := strings.TrimSpace(r.PostFormValue(k)); v != "" {
			body[k] = number(v)
		}
	}
	if v := strings.TrimSpace(r.PostFormValue("expires_at")); v != "" {
		// <input type=datetime-local> sends 2026-11-27T10:00 (taken as UTC).
		if t, err := time.Parse("2006-01-02T15:04", v); err == nil {
			v = t.Format(time.RFC3339)
		}
		body["expires_at"] = v
	}
	var out struct {
		Secret string  `json:"secret"`
		Key    keyJSON `json:"key"`
	}
	if err := c.call(r.Context(), s, "POST", "/v1/keys", nil, body, &out); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && (ae.Status == 401 || ae.Status == 403) {
			return err
		}
		f.fail(err, createFields...)
		v := c.viewFor(s, "New key", "keys")
		v.Form = f
		status := 400
		if errors.As(err, &ae) {
			status = ae.Status
		}
		c.render(w, status, "key_new", v)
		return nil
	}
	v := c.viewFor(s, "Key created", "keys")
	v.D = createdData{Secret: out.Secret, Key: out.Key}
	c.render(w, http.StatusCreated, "key_created", v)
	return nil
}

type usagePoint struct {
	Start    time.Time `json:"start"`
	Outcome  string    `json:"outcome"`
	Requests uint64    `json:"requests"`
	Allowed  uint64    `json:"allowed"`
}

type usageResp struct {
	Granularity string       `json:"granularity"`
	Points      []usagePoint `json:"points"`
}

// chart is a uPlot-ready series set: times in Unix seconds, one series
// per outcome.
type chart struct {
	Times  []int64     `json:"times"`
	Series []chartLine `json:"series"`
	Rows   []chartRow  `json:"-"` // the same figures as a table
	Total  uint64      `json:"-"`
}

type chartLine struct {
	Name   string    `json:"name"`
	Values []float64 `json:"values"`
}

type chartRow struct {
	Start    time.Time
	Outcome  string
	Requests uint64
}

func (ch chart) JSON() string { b, _ := json.Marshal(ch); return string(b) }

func buildChart(pts []usagePoint) chart {
	var ch chart
	idx := map[int64]int{}
	lines := map[string][]float64{}
	for _, p := range pts {
		t := p.Start.Unix()
		if _, ok := idx[t]; !ok {
			idx[t] = len(ch.Times)
			ch.Times = append(ch.Times, t)
		}
	}
	sort.Slice(ch.Times, func(i, j int) bool { return ch.Times[i] < ch.Times[j] })
	for i, t := range ch.Times {
		idx[t] = i
	}
	for _, p := range pts {
		o := p.Outcome
		if o == "" {
			o = "all"
		}
		if lines[o] == nil {
			lines[o] = make([]float64, len(ch.Times))
		}
		lines[o][idx[p.Start.Unix()]] += float64(p.Requests)
		ch.Rows = append(ch.Rows, chartRow{Start: p.Start, Outcome: o, Requests: p.Requests})
		ch.Total += p.Requests
	}
	names := make([]string, 0, len(lines))
	for n := range lines {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		ch.Series = append(ch.Series, chartLine{Name: n, Values: lines[n]})
	}
	return ch
}

var granularityWindow = map[string]time.Duration{"minute": 2 * time.Hour, "hour": 7 * 24 * time.Hour, "day": 90 * 24 * time.Hour}

func (c *Console) usageChart(r *http.Request, s *session, q url.Values, gran string) (chart, error) {
	win, ok := granularityWindow[gran]
	if !ok {
		gran, win = "hour", granularityWindow["hour"]
	}
	now := time.Now().UTC()
	q.Set("granularity", gran)
	q.Set("group_by", "outcome")
	q.Set("to", now.Add(time.Minute).Truncate(time.Minute).Format(time.RFC3339))
	q.Set("from", now.Add(-win).Truncate(time.Minute).Format(time.RFC3339))
	var u usageResp
	if err := c.call(r.Context(), s, "GET", "/v1/usage", q, nil, &u); err != nil {
		return chart{}, err
	}
	return buildChart(u.Points), nil
}

type logEvent struct {
	ID        string `json:"id"`
	Time      string `json:"time"`
	Project   string `json:"project"`
	KeyID     string `json:"key_id"`
	Outcome   string `json:"outcome"`
	ClientIP  string `json:"client_ip"`
	Country   string `json:"country"`
	ASN       uint32 `json:"asn"`
	Method    string `json:"method"`
	Route     string `json:"route"`
	Status    uint16 `json:"status"`
	LatencyUS uint32 `json:"latency_us"`
}

type logsResp struct {
	Events []logEvent `json:"events"`
	Next   string     `json:"next"`
}

type decisionJSON struct {
	ID          string          `json:"id"`
	Time        time.Time       `json:"time"`
	RuleID      string          `json:"rule_id"`
	RuleVersion uint32          `json:"rule_version"`
	Mode        string          `json:"mode"`
	Action      string          `json:"action"`
	Project     string          `json:"project"`
	KeyID       string          `json:"key_id"`
	ClientIP    string          `json:"client_ip"`
	Group       string          `json:"group"`
	Reason      string          `json:"reason"`
	Evidence    json.RawMessage `json:"evidence"`
}

func (d decisionJSON) EvidenceText() string {
	if len(d.Evidence) == 0 {
		return ""
	}
	var v any
	if json.Unmarshal(d.Evidence, &v) != nil {
		return string(d.Evidence)
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// Link is the decision's console page; key and time let the page find it
// with a narrow query.
func (d decisionJSON) Link() string {
	q := url.Values{"t": {d.Time.UTC().Format(time.RFC3339Nano)}}
	if d.KeyID != "" {
		q.Set("key", d.KeyID)
	}
	return Prefix + "/decisions/" + url.PathEscape(d.ID) + "?" + q.Encode()
}

type decisionsResp struct {
	Decisions []decisionJSON `json:"decisions"`
	Next      string         `json:"next"`
}

type keyPageData struct {
	Key         keyJSON
	Gran        string
	Chart       chart
	ChartErr    string
	Logs        []logEvent
	LogsErr     string
	Decisions   []decisionJSON
	DecisionErr string
	Countries   []countryCount
	History     []historyItem
	HistoryErr  string
	Profile     *keyProfile
	ProfileErr  string
}

type countryCount struct {
	Country  string
	Requests uint64
}

// countries are the countries a key was used from in the last 30 days, most
// requests first.
func (c *Console) countries(r *http.Request, s *session, id string) []countryCount {
	now := time.Now().UTC()
	q := url.Values{"key": {id}, "granularity": {"day"}, "group_by": {"country"},
		"from": {now.AddDate(0, 0, -30).Truncate(time.Hour).Format(time.RFC3339)}, "to": {now.Add(time.Minute).Truncate(time.Minute).Format(time.RFC3339)}}
	var u struct {
		Points []struct {
			Country  string `json:"country"`
			Requests uint64 `json:"requests"`
		} `json:"points"`
	}
	if c.call(r.Context(), s, "GET", "/v1/usage", q, nil, &u) != nil {
		return nil
	}
	by := map[string]uint64{}
	for _, p := range u.Points {
		by[p.Country] += p.Requests
	}
	out := make([]countryCount, 0, len(by))
	for k, n := range by {
		if k == "" {
			k = "unknown"
		}
		out = append(out, countryCount{k, n})
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Requests > out[j].Requests || out[i].Requests == out[j].Requests && out[i].Country < out[j].Country
	})
	return out
}

func (c *Console) keyPage(w http.ResponseWriter, r *http.Request, s *session) error {
	id := r.PathValue("id")
	d := keyPageData{Gran: r.URL.Query().Get("granularity")}
	if _, ok := granularityWindow[d.Gran]; !ok {
		d.Gran = "hour"
	}
	if err := c.call(r.Context(), s, "GET", "/v1/keys/"+url.PathEscape(id), nil, nil, &d.Key); err != nil {
		return err
	}
	var err error
	if d.Chart, err = c.usageChart(r, s, url.Values{"key": {id}}, d.Gran); err != nil {
		d.ChartErr = err.Error()
	}
	var lr logsResp
	if err := c.call(r.Context(), s, "GET", "/v1/logs", url.Values{"key": {id}, "limit": {"20"}}, nil, &lr); err != nil {
		d.LogsErr = err.Error()
	}
	d.Logs = lr.Events
	var dr decisionsResp
	if err := c.call(r.Context(), s, "GET", "/v1/decisions", url.Values{"key": {id}, "limit": {"20"}}, nil, &dr); err != nil {
		d.DecisionErr = err.Error()
	}
	d.Decisions = dr.Decisions
	d.Countries = c.countries(r, s, id)
	if st := c.cfg.Sources.Store; st != nil {
		if d.Profile, err = profileOf(r.Context(), st, d.Key.Project, d.Key.ID, time.Now().UTC()); err != nil {
			c.log.Warn("console: key profile", "key", id, "err", err)
			d.ProfileErr = "the profile could not be read from the store"
		}
	}
	if d.History, err = c.keyHistory(r, s, d.Key, d.Decisions); err != nil {
		d.HistoryErr = err.Error()
	}
	v := c.viewFor(s, "Key "+id, "keys")
	v.D = d
	v.Form = newForm(url.Values{})
	if fl := r.URL.Query().Get("done"); fl != "" {
		v.Flash = "Key " + fl + "."
	}
	c.render(w, 200, "key", v)
	return nil
}

// keyAction suspends, resumes or revokes a key through the API.
func (c *Console) keyAction(w http.ResponseWriter, r *http.Request, s *session) error {
	id, action := r.PathValue("id"), r.PathValue("action")
	var body any
	switch action {
	case "suspend", "resume":
	case "rotate":
		// A new secret, shown once; the old one keeps working for the grace.
		req := map[string]string{}
		if g := strings.TrimSpace(r.PostFormValue("grace_period")); g != "" {
			req["grace_period"] = g
		}
		var out createdData
		var created struct {
			Secret string  `json:"secret"`
			Key    keyJSON `json:"key"`
		}
		if err := c.call(r.Context(), s, "POST", "/v1/keys/"+url.PathEscape(id)+"/rotate", nil, req, &created); err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.Field == "grace_period" {
				return c.keyFormError(w, r, s, id, "grace_period", ae.Message)
			}
			return err
		}
		out.Secret, out.Key = created.Secret, created.Key
		v := c.viewFor(s, "Key rotated", "keys")
		v.Flash = "Key " + id + " rotated: the new key replaces it."
		v.D = out
		c.render(w, http.StatusCreated, "key_created", v)
		return nil
	case "edit":
		return c.editKey(w, r, s, id)
	case "revoke":
		reason := strings.TrimSpace(r.PostFormValue("reason"))
		if reason == "" {
			return c.keyFormError(w, r, s, id, "reason", "reason is required: say why the key is revoked (it is kept with the key)")
		}
		body = map[string]string{"reason": reason}
	default:
		return &apiError{Status: 404, Code: "not_found", Message: "no key action " + action}
	}
	if err := c.call(r.Context(), s, "POST", "/v1/keys/"+url.PathEscape(id)+"/"+action, nil, body, nil); err != nil {
		return err
	}
	done := map[string]string{"suspend": "suspended", "resume": "resumed", "revoke": "revoked"}[action]
	c.redirect(w, r, Prefix+"/keys/"+url.PathEscape(id)+"?done="+done)
	return nil
}

func (c *Console) keyFormError(w http.ResponseWriter, r *http.Request, s *session, id, field, msg string) error {
	d := keyPageData{Gran: "hour"}
	if err := c.call(r.Context(), s, "GET", "/v1/keys/"+url.PathEscape(id), nil, nil, &d.Key); err != nil {
		return err
	}
	d.Chart, _ = c.usageChart(r, s, url.Values{"key": {id}}, d.Gran)
	v := c.viewFor(s, "Key "+id, "keys")
	v.D = d
	v.Form = newForm(r.PostForm)
	v.Form.Errors[field] = msg
	c.render(w, 400, "key", v)
	return nil
}

// --- logs ---

var logFilterFields = []string{"key", "project", "ip", "outcome", "status", "route", "country", "from", "to"}

type logsData struct {
	Events []logEvent
	Next   string
	Filter url.Values
	Tail   bool // refresh the first page every 5 s
}

// TailURL is the page's own refresh (?live=1 keeps it from extending an
// idle session); ToggleTail switches tailing on or off.
func (d logsData) TailURL() string { return d.with("live", "1") }
func (d logsData) ToggleTail() string {
	if d.Tail {
		return d.with("tail", "")
	}
	return d.with("tail", "1")
}

func (d logsData) with(k, v string) string {
	n := url.Values{}
	for key, vs := range d.Filter {
		if key != "cursor" && key != "live" && len(vs) > 0 && vs[0] != "" {
			n.Set(key, vs[0])
		}
	}
	if v == "" {
		n.Del(k)
	} else {
		n.Set(k, v)
	}
	return Prefix + "/logs?" + n.Encode()
}

// datetimeLocal turns <input type=datetime-local> values into RFC 3339.
func datetimeLocal(v string) string {
	if t, err := time.Parse("2006-01-02T15:04", v); err == nil {
		return t.Format(time.RFC3339)
	}
	return v
}

func (c *Console) logsPage(w http.ResponseWriter, r *http.Request, s *session) error {
	in := r.URL.Query()
	f := newForm(in)
	q := url.Values{"limit": {pageLimit(in, 50)}}
	for _, k := range append(logFilterFields, "cursor") {
		if v := strings.TrimSpace(in.Get(k)); v != "" {
			if k == "from" || k == "to" {
				v = datetimeLocal(v)
			}
			q.Set(k, v)
		}
	}
	d := logsData{Filter: in, Tail: in.Get("tail") != "" && in.Get("cursor") == ""}
	var lr logsResp
	status := 200
	if err := c.call(r.Context(), s, "GET", "/v1/logs", q, nil, &lr); err != nil {
		f.fail(err, append(logFilterFields, "cursor")...)
		status = 400
	}
	d.Events, d.Next = lr.Events, lr.Next
	v := c.viewFor(s, "Logs", "logs")
	v.Form, v.D = f, d
	c.render(w, status, "logs", v)
	return nil
}

// --- decisions ---

var decisionFilterFields = []string{"project", "key", "rule", "from", "to"}

type decisionsData struct {
	Decisions []decisionJSON
	Next      string
	Filter    url.Values
}

func (c *Console) decisionsPage(w http.ResponseWriter, r *http.Request, s *session) error {
	in := r.URL.Query()
	f := newForm(in)
	q := url.Values{"limit": {pageLimit(in, 50)}}
	for _, k := range append(decisionFilterFields, "cursor") {
		if v := strings.TrimSpace(in.Get(k)); v != "" {
			if k == "from" || k == "to" {
				v = datetimeLocal(v)
			}
			q.Set(k, v)
		}
	}
	var dr decisionsResp
	status := 200
	if err := c.call(r.Context(), s, "GET", "/v1/decisions", q, nil, &dr); err != nil {
		f.fail(err, append(decisionFilterFields, "cursor")...)
		status = 400
	}
	v := c.viewFor(s, "Decisions", "decisions")
	v.Form, v.D = f, decisionsData{Decisions: dr.Decisions, Next: dr.Next, Filter: in}
	c.render(w, status, "decisions", v)
	return nil
}

type decisionData struct {
	D      decisionJSON
	Around []logEvent
}

func (c *Console) decisionPage(w http.ResponseWriter, r *http.Request, s *session) error {
	id := r.PathValue("id")
	in := r.URL.Query()
	q := url.Values{"limit": {"1000"}}
	if k := in.Get("key"); k != "" {
		q.Set("key", k)
	}
	if t, err := time.Parse(time.RFC3339Nano, in.Get("t")); err == nil {
		q.Set("from", t.Add(-time.Second).Format(time.RFC3339))
		q.Set("to", t.Add(2*time.Second).Format(time.RFC3339))
	}
	var found *decisionJSON
	for range 10 { // a bounded scan when the link carried no key and time
		var dr decisionsResp
		if err := c.call(r.Context(), s, "GET", "/v1/decisions", q, nil, &dr); err != nil {
			return err
		}
		for i := range dr.Decisions {
			if dr.Decisions[i].ID == id {
				found = &dr.Decisions[i]
				break
			}
		}
		if found != nil || dr.Next == "" {
			break
		}
		q.Set("cursor", dr.Next)
	}
	if found == nil {
		return &apiError{Status: 404, Code: "not_found", Message: "no decision " + id}
	}
	d := decisionData{D: *found}
	if found.KeyID != "" {
		// The events around it: five minutes before, one after.
		var lr logsResp
		lq := url.Values{"key": {found.KeyID}, "limit": {"50"},
			"from": {found.Time.Add(-5 * time.Minute).UTC().Format(time.RFC3339)}, "to": {found.Time.Add(time.Minute).UTC().Format(time.RFC3339)}}
		if c.call(r.Context(), s, "GET", "/v1/logs", lq, nil, &lr) == nil {
			d.Around = lr.Events
		}
	}
	v := c.viewFor(s, "Decision "+id, "decisions")
	v.D = d
	c.render(w, 200, "decision", v)
	return nil
}

// --- rules ---

type ruleJSON struct {
	ID          string            `json:"id"`
	Version     uint32            `json:"version"`
	Mode        string            `json:"mode"`
	Effective   string            `json:"effective_mode"`
	Override    string            `json:"mode_override"`
	Evaluations uint64            `json:"evaluations"`
	Matches     uint64            `json:"matches"`
	Groups      int               `json:"groups"`
	Firings     map[string]uint64 `json:"firings"`
	Tripped     bool              `json:"breaker_tripped"`
}

func (c *Console) rulesPage(w http.ResponseWriter, r *http.Request, s *session) error {
	var out struct {
		Rules []ruleJSON `json:"rules"`
	}
	v := c.viewFor(s, "Rules", "rules")
	if err := c.call(r.Context(), s, "GET", "/v1/rules", nil, nil, &out); err != nil {
		var ae *apiError
		if !errors.As(err, &ae) {
			return err
		}
		v.Err = ae
	}
	v.D = out.Rules
	switch id, m := r.URL.Query().Get("switched"), r.URL.Query().Get("mode"); {
	case id != "" && (m == "enforce" || m == "dry_run"):
		v.Flash = "Rule " + id + " switched to " + m + ": every detector applies it as it receives it."
	case id != "" && m == "file":
		v.Flash = "Rule " + id + " is back to its file's mode: every detector applies it as it receives it."
	}
	c.render(w, 200, "rules", v)
	return nil
}

// ruleMode switches a rule between enforce and dry-run through the API
// (PUT /v1/rules/{id}/mode; the API refuses read sessions).
func (c *Console) ruleMode(w http.ResponseWriter, r *http.Request, s *session) error {
	id, mode := r.PathValue("id"), r.PostFormValue("mode")
	if err := c.call(r.Context(), s, "PUT", "/v1/rules/"+url.PathEscape(id)+"/mode", nil, map[string]string{"mode": mode}, nil); err != nil {
		return err
	}
	c.redirect(w, r, Prefix+"/rules?switched="+url.QueryEscape(id)+"&mode="+url.QueryEscape(mode))
	return nil
}

// --- overview ---

type overviewData struct {
	AsOf        time.Time
	Keys        map[string]int
	KeysTotal   int
	KeysCapped  bool
	Projects    []string
	Chart       chart
	ChartErr    string
	PerSecond   map[string]float64
	Decisions   int
	Revocations int
	DryRun      int
	DecErr      string
	Rules       []ruleJSON
	Stored      uint64 // events stored (0: unknown)
}

// projects lists the projects of the keys the API knows, from a bounded
// number of key pages.
func (c *Console) keyStats(r *http.Request, s *session) (byStatus map[string]int, projects []string, capped bool, err error) {
	if kc := c.cfg.Sources.KeyCounts; kc != nil {
		byStatus, projects = kc()
		return byStatus, projects, false, nil
	}
	byStatus = map[string]int{}
	seen := map[string]bool{}
	q := url.Values{"limit": {"1000"}}
	for i := 0; ; i++ {
		if i == 20 {
			capped = true
			break
		}
		var page keyList
		if err := c.call(r.Context(), s, "GET", "/v1/keys", q, nil, &page); err != nil {
			return nil, nil, false, err
		}
		for _, k := range page.Keys {
			byStatus[k.Status]++
			if !seen[k.Project] {
				seen[k.Project] = true
				projects = append(projects, k.Project)
			}
		}
		if page.Next == "" {
			break
		}
		q.Set("cursor", page.Next)
	}
	sort.Strings(projects)
	return byStatus, projects, capped, nil
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) error {
	d := overviewData{AsOf: time.Now().UTC()}
	var err error
	if d.Keys, d.Projects, d.KeysCapped, err = c.keyStats(r, s); err != nil {
		return err
	}
	for _, n := range d.Keys {
		d.KeysTotal += n
	}
	// Requests by outcome over the last two hours, by minute, summed over
	// the projects (at most 20 on the overview).
	var pts []usagePoint
	for i, p := range d.Projects {
		if i == 20 {
			break
		}
		now := time.Now().UTC()
		from, to := now.Add(-time.Hour).Truncate(time.Minute), now.Add(time.Minute).Truncate(time.Minute)
		if st := c.cfg.Sources.Store; st != nil {
			// Requests only: the API's usage also merges address sketches.
			up, err := projectUsage(r.Context(), st, p, "minute", from, to)
			if err != nil {
				c.log.Warn("console: overview usage", "project", p, "err", err)
				d.ChartErr = "the usage could not be read from the store"
				break
			}
			pts = append(pts, up...)
			continue
		}
		q := url.Values{"project": {p}, "granularity": {"minute"}, "group_by": {"outcome"},
			"from": {from.Format(time.RFC3339)}, "to": {to.Format(time.RFC3339)}}
		var u usageResp
		if err := c.call(r.Context(), s, "GET", "/v1/usage", q, nil, &u); err != nil {
			d.ChartErr = err.Error()
			break
		}
		pts = append(pts, u.Points...)
	}
	d.Chart = buildChart(pts)
	// Requests per second by outcome in the last full minute.
	d.PerSecond = map[string]float64{}
	if n := len(d.Chart.Times); n > 0 {
		last := time.Now().UTC().Truncate(time.Minute).Add(-time.Minute).Unix()
		for i, t := range d.Chart.Times {
			if t == last {
				for _, l := range d.Chart.Series {
					d.PerSecond[l.Name] = l.Values[i] / 60
				}
			}
		}
	}
	d.Decisions, d.Revocations, d.DecErr = c.lastHourDecisions(r.Context(), s)
	var rr struct {
		Rules []ruleJSON `json:"rules"`
	}
	if c.call(r.Context(), s, "GET", "/v1/rules", nil, nil, &rr) == nil {
		for _, x := range rr.Rules {
			if x.Effective == "dry_run" || x.Tripped {
				d.Rules = append(d.Rules, x)
			}
		}
	}
	if st := c.cfg.Sources.Store; st != nil {
		d.Stored, _ = st.Count(r.Context(), "requests")
	}
	v := c.viewFor(s, "Overview", "overview")
	v.D = d
	c.render(w, 200, "overview", v)
	return nil
}

// --- usage and billing ---

type usagePageData struct {
	Projects []string
	Project  string
	Gran     string
	Chart    chart
	Period   string
	TopKeys  []keyJSON // by quota used this month
	Quotas   map[string]int
}

// quotaKeys reads a project's keys (bounded) for their quota use.
func (c *Console) quotaKeys(r *http.Request, s *session, project string) ([]keyJSON, map[string]int) {
	if qk := c.cfg.Sources.QuotaKeys; qk != nil {
		ids, states := qk(project, 10)
		top := make([]keyJSON, 0, len(ids))
		for _, id := range ids {
			var k keyJSON
			if c.call(r.Context(), s, "GET", "/v1/keys/"+url.PathEscape(id), nil, nil, &k) == nil {
				top = append(top, k)
			}
		}
		return top, states
	}
	states := map[string]int{}
	var all []keyJSON
	q := url.Values{"project": {project}, "limit": {"1000"}}
	for range 10 {
		var page keyList
		if c.call(r.Context(), s, "GET", "/v1/keys", q, nil, &page) != nil {
			break
		}
		for _, k := range page.Keys {
			if k.QuotaState != "" {
				states[k.QuotaState]++
			}
			all = append(all, k)
		}
		if page.Next == "" {
			break
		}
		q.Set("cursor", page.Next)
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].QuotaUsed > all[j].QuotaUsed })
	return all[:min(len(all), 10)], states
}

func (c *Console) usagePage(w http.ResponseWriter, r *http.Request, s *session) error {
	in := r.URL.Query()
	_, projects, _, err := c.keyStats(r, s)
	if err != nil {
		return err
	}
	d := usagePageData{Projects: projects, Project: in.Get("project"), Gran: in.Get("granularity"),
		Period: time.Now().UTC().Format("2006-01")}
	if _, ok := granularityWindow[d.Gran]; !ok {
		d.Gran = "day"
	}
	if d.Project == "" && len(projects) > 0 {
		d.Project = projects[0]
	}
	v := c.viewFor(s, "Usage and billing", "usage")
	v.Form = newForm(in)
	if d.Project != "" {
		if d.Chart, err = c.projectChart(r, s, d.Project, d.Gran); err != nil {
			v.Form.fail(err, "project", "granularity")
		}
		d.TopKeys, d.Quotas = c.quotaKeys(r, s, d.Project)
	}
	v.D = d
	c.render(w, 200, "usage", v)
	return nil
}

// billingFile downloads a period's line items (2026-11.csv or .json).
func (c *Console) billingFile(w http.ResponseWriter, r *http.Request, s *session) error {
	file := r.PathValue("file")
	period, format, ok := strings.Cut(file, ".")
	if !ok || (format != "csv" && format != "json") {
		return &apiError{Status: 404, Code: "not_found", Message: "want <period>.csv or <period>.json"}
	}
	rec, err := c.raw(r.Context(), s, "GET", "/v1/billing/"+url.PathEscape(period), url.Values{"format": {format}}, nil)
	if err != nil {
		return err
	}
	if rec.status >= 400 {
		return c.call(r.Context(), s, "GET", "/v1/billing/"+url.PathEscape(period), url.Values{"format": {format}}, nil, nil)
	}
	w.Header().Set("Content-Type", rec.header.Get("Content-Type"))
	w.Header().Set("Cache-Control", "no-store") // billing data: kept by no cache or proxy
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=\"keymeter-billing-%s.%s\"", period, format))
	_, _ = w.Write(rec.body.Bytes())
	return nil
}

var editFields = []string{"name", "scopes", "allowed_cidrs", "rate_limit_per_s", "rate_limit_burst", "monthly_quota", "expires_at"}

// editKey changes a key's name and limits (PATCH /v1/keys/{id}); a field
// left as it was shown is sent all the same, which the API accepts.
func (c *Console) editKey(w http.ResponseWriter, r *http.Request, s *session, id string) error {
	body := map[string]any{}
	body["name"] = strings.TrimSpace(r.PostFormValue("name"))
	scopes, cidrs := list(r.PostFormValue("scopes")), list(r.PostFormValue("allowed_cidrs"))
	if scopes == nil {
		scopes = []string{}
	}
	if cidrs == nil {
		cidrs = []string{}
	}
	body["scopes"], body["allowed_cidrs"] = scopes, cidrs
	for _, k := range []string{"rate_limit_per_s", "rate_limit_burst", "monthly_quota"} {
		v := strings.TrimSpace(r.PostFormValue(k))
		if v == "" {
			v = "0"
		}
		body[k] = number(v)
	}
	if v := strings.TrimSpace(r.PostFormValue("expires_at")); v != "" {
		body["expires_at"] = datetimeLocal(v)
	}
	if err := c.call(r.Context(), s, "PATCH", "/v1/keys/"+url.PathEscape(id), nil, body, nil); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && (ae.Status == 401 || ae.Status == 403 || ae.Status == 404) {
			return err
		}
		d := keyPageData{Gran: "hour"}
		if err := c.call(r.Context(), s, "GET", "/v1/keys/"+url.PathEscape(id), nil, nil, &d.Key); err != nil {
			return err
		}
		v := c.viewFor(s, "Key "+id, "keys")
		v.D = d
		v.Form = newForm(r.PostForm)
		v.Form.Values.Set("editing", "1")
		v.Form.fail(err, editFields...)
		status := 400
		if ae != nil {
			status = ae.Status
		}
		c.render(w, status, "key", v)
		return nil
	}
	c.redirect(w, r, Prefix+"/keys/"+url.PathEscape(id)+"?done=updated")
	return nil
}

// EditForm is the edit form of a key: what was typed when coming back with
// an error, else the key's current values.
func (d keyPageData) EditForm(f *form) *form {
	if f != nil && f.Get("editing") != "" {
		return f
	}
	k := d.Key
	v := url.Values{"name": {k.Name}, "scopes": {strings.Join(k.Scopes, ", ")}, "allowed_cidrs": {strings.Join(k.AllowedCIDRs, ", ")}}
	if k.RateLimitPerS != 0 {
		v.Set("rate_limit_per_s", strconv.FormatFloat(k.RateLimitPerS, 'f', -1, 64))
	}
	if k.RateBurst != 0 {
		v.Set("rate_limit_burst", strconv.FormatUint(uint64(k.RateBurst), 10))
	}
	if k.MonthlyQuota != 0 {
		v.Set("monthly_quota", strconv.FormatUint(k.MonthlyQuota, 10))
	}
	if k.ExpiresAt != nil {
		v.Set("expires_at", k.ExpiresAt.UTC().Format("2006-01-02T15:04"))
	}
	return &form{Values: v, Errors: map[string]string{}}
}
