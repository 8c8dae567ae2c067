package apiclient

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/api"
)

// The flags of the CLI's API commands (keymeter keys, usage, logs,
// billing, decisions): each request type binds its own.

// Flags are how a CLI command reaches the API: --server, --token, -o.
type Flags struct {
	Server string
	Token  string
	Output string
	Stdout io.Writer // where Show writes; nil: os.Stdout
}

// Bind defines --server, --token and --output on fs.
func (f *Flags) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.Server, "server", "http://127.0.0.1:8081", "keymeter API base URL")
	fs.StringVar(&f.Token, "token", "", "admin token (prefer KEYMETER_TOKEN in the environment: arguments show in ps)")
	fs.StringVarP(&f.Output, "output", "o", "", "output: table (default on a terminal) or json")
}

// JSON reports whether the output is JSON: -o json, or no -o and stdout
// not a terminal.
func (f *Flags) JSON() bool {
	if f.Output == "" {
		return !isatty.IsTerminal(os.Stdout.Fd())
	}
	return f.Output == "json"
}

// Client checks the flags and returns an API client.
func (f *Flags) Client() (*Client, error) {
	if f.Output != "" && f.Output != "json" && f.Output != "table" {
		return nil, fmt.Errorf("-o %q: accepted values are table, json", f.Output)
	}
	return New(Config{Server: f.Server, Token: f.Token})
}

// Show writes v as JSON when JSON output is asked for, else calls asTable.
func (f *Flags) Show(v any, asTable func(w io.Writer)) error {
	w := f.Stdout
	if w == nil {
		w = os.Stdout
	}
	if f.JSON() {
		return WriteJSON(w, v)
	}
	asTable(w)
	return nil
}

// Bind defines keymeter usage's filter flags.
func (f *UsageFilter) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.Key, "key", "", "key id")
	fs.StringVar(&f.Project, "project", "", "project")
	fs.StringVar(&f.From, "from", "", "start, RFC 3339 (default 30 days ago)")
	fs.StringVar(&f.To, "to", "", "end, RFC 3339 (default now)")
	fs.StringVar(&f.Granularity, "granularity", "day", "minute, hour, day or month")
	fs.StringVar(&f.GroupBy, "group-by", "", "comma-separated: outcome, route, country")
}

// Bind defines keymeter logs' filter flags.
func (f *LogFilter) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.Key, "key", "", "key id")
	fs.StringVar(&f.Project, "project", "", "project")
	fs.StringVar(&f.IP, "ip", "", "client address or CIDR")
	fs.StringVar(&f.Status, "status", "", "HTTP status or range, e.g. 429 or 500-599")
	fs.StringVar(&f.Outcome, "outcome", "", "outcome, e.g. valid, revoked, rate_limited")
	fs.StringVar(&f.Route, "route", "", "route")
	fs.StringVar(&f.Country, "country", "", "ISO country code")
	fs.StringVar(&f.From, "from", "", "start, RFC 3339")
	fs.StringVar(&f.To, "to", "", "end, RFC 3339")
}

// Bind defines keymeter decisions' filter flags.
func (f *DecisionFilter) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.Key, "key", "", "key id")
	fs.StringVar(&f.Rule, "rule", "", "rule id")
	fs.StringVar(&f.Project, "project", "", "project")
	fs.IntVar(&f.Limit, "limit", 50, "how many")
	fs.StringVar(&f.Cursor, "cursor", "", "the cursor printed after the previous page")
}

// Bind defines keymeter keys list's filter flags.
func (f *KeyFilter) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.Project, "project", "", "only this project")
	fs.StringVar(&f.Status, "status", "", "only this status: active, suspended, revoked, deleted")
	fs.IntVar(&f.PageSize, "page-size", 500, "keys per API page")
}

// Bind defines keymeter keys update's flags; Request sends only those given.
func (up *KeyUpdate) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&up.Name, "name", "", "new name")
	fs.StringVar(&up.Kind, "kind", "", "what the key is embedded in: server, browser, mobile or batch")
	fs.Float64Var(&up.Rate, "rate", 0, "requests per second (0: unlimited)")
	fs.Uint32Var(&up.Burst, "burst", 0, "burst size")
	fs.Uint64Var(&up.Quota, "quota", 0, "requests per month (0: unlimited)")
	fs.StringSliceVar(&up.Scopes, "scopes", nil, "scopes (replaces the list)")
	fs.StringSliceVar(&up.CIDRs, "cidrs", nil, "allowed client networks (replaces the list)")
	fs.StringVar(&up.Expires, "expires", "", "expiry, RFC 3339")
	fs.Float64Var(&up.Throttle, "throttle", 0, "throttle to this many requests per second")
	fs.DurationVar(&up.ThrottleDuration, "throttle-for", time.Hour, "how long the throttle lasts")
}

// KeyCreate is keymeter keys create's flags.
type KeyCreate struct {
	Req                api.CreateKeyRequest
	Expires, Env, Kind string
	Rate               float64
}

// Bind defines keymeter keys create's flags (--project is required).
func (k *KeyCreate) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&k.Req.Project, "project", "", "project (tenant) of the key (required)")
	fs.StringVar(&k.Req.Name, "name", "", "a name for people")
	fs.StringVar(&k.Req.Owner, "owner", "", "who owns the key")
	fs.StringVar(&k.Env, "env", "live", "live or test")
	fs.StringVar(&k.Kind, "kind", "server", "what the key is embedded in: server, browser, mobile or batch (detection compares a key with keys of its kind)")
	fs.Float64Var(&k.Rate, "rate", 0, "requests per second (0: unlimited)")
	fs.Uint32Var(&k.Req.RateBurst, "burst", 0, "burst size (default: rate)")
	fs.Uint64Var(&k.Req.MonthlyQuota, "quota", 0, "requests per month (0: unlimited)")
	fs.StringSliceVar(&k.Req.Scopes, "scopes", nil, "scopes the key may use")
	fs.StringSliceVar(&k.Req.AllowedCIDRs, "cidrs", nil, "client networks the key may be used from")
	fs.StringVar(&k.Expires, "expires", "", "expiry: a duration from now (720h) or an RFC 3339 time")
}

// Request is the create request of the flags; the kind is sent only when
// --kind was given (changed reports whether a flag was).
func (k *KeyCreate) Request(changed func(string) bool) (api.CreateKeyRequest, error) {
	cr := k.Req
	env := k.Env
	cr.Env = &env
	if changed("kind") {
		kind := k.Kind
		cr.Kind = &kind
	}
	if k.Rate != 0 {
		rate := k.Rate
		cr.RateLimitPerS = &rate
	}
	if k.Expires != "" {
		t, err := ParseExpiry(k.Expires)
		if err != nil {
			return cr, err
		}
		cr.ExpiresAt = &t
	}
	return cr, nil
}
