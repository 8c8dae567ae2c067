package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/leaks"
)

func init() { register(newKeysCmd) }

func newKeysCmd(g *globals) *cobra.Command {
	cf := &clientFlags{}
	c := &cobra.Command{
		Use:   "keys",
		Short: "Manage API keys through the keymeter API",
		Long: `Create, list, show, rotate, revoke, suspend, resume, update and delete keys.
Every change is an event on the key-state log: every verifier applies it within
milliseconds. The secret of a new key is shown once and stored nowhere.`,
	}
	cf.add(c.PersistentFlags())
	printKeys := func(ks ...api.KeyJSON) {
		rows := make([][]string, 0, len(ks))
		for _, k := range ks {
			quota := "-"
			if k.MonthlyQuota > 0 {
				quota = fmt.Sprintf("%d/%d %s", k.QuotaUsed, k.MonthlyQuota, k.QuotaState)
			}
			rate := "-"
			if k.RateLimitPerS > 0 {
				rate = strconv.FormatFloat(k.RateLimitPerS, 'f', -1, 64) + "/s"
			}
			rows = append(rows, []string{k.ID, k.Project, k.Name, k.Kind, k.DisplayPrefix + "…", k.Status, rate, quota, fmtTime(k.ExpiresAt)})
		}
		table([]string{"ID", "PROJECT", "NAME", "KIND", "KEY", "STATUS", "RATE", "QUOTA", "EXPIRES"}, rows)
	}
	showOne := func(raw []byte, k api.KeyJSON) {
		if cf.json() {
			printJSON(raw)
			return
		}
		printKeys(k)
	}
	showCreated := func(raw []byte, cr api.CreatedJSON) {
		if cf.json() {
			printJSON(raw)
			return
		}
		fmt.Printf("secret: %s\n(shown once: keymeter keeps only its SHA-256)\n\n", cr.Secret)
		printKeys(cr.Key)
	}

	var cr api.CreateKeyRequest
	var expires, env, kind string
	var rate float64
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a key; prints its secret once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cr.Env = &env
			if cmd.Flags().Changed("kind") {
				cr.Kind = &kind
			}
			if rate != 0 {
				cr.RateLimitPerS = &rate
			}
			if expires != "" {
				d, err := time.ParseDuration(expires)
				if err != nil {
					t, terr := time.Parse(time.RFC3339, expires)
					if terr != nil {
						return fmt.Errorf("--expires %q: want a duration (720h) or an RFC 3339 time", expires)
					}
					cr.ExpiresAt = &t
				} else {
					t := time.Now().Add(d).UTC()
					cr.ExpiresAt = &t
				}
			}
			var out api.CreatedJSON
			raw, err := cf.do("POST", "/v1/keys", nil, cr, &out)
			if err != nil {
				return err
			}
			showCreated(raw, out)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&cr.Project, "project", "", "project (tenant) of the key (required)")
	f.StringVar(&cr.Name, "name", "", "a name for people")
	f.StringVar(&cr.Owner, "owner", "", "who owns the key")
	f.StringVar(&env, "env", "live", "live or test")
	f.StringVar(&kind, "kind", "server", "what the key is embedded in: server, browser, mobile or batch (detection compares a key with keys of its kind)")
	f.Float64Var(&rate, "rate", 0, "requests per second (0: unlimited)")
	f.Uint32Var(&cr.RateBurst, "burst", 0, "burst size (default: rate)")
	f.Uint64Var(&cr.MonthlyQuota, "quota", 0, "requests per month (0: unlimited)")
	f.StringSliceVar(&cr.Scopes, "scopes", nil, "scopes the key may use")
	f.StringSliceVar(&cr.AllowedCIDRs, "cidrs", nil, "client networks the key may be used from")
	f.StringVar(&expires, "expires", "", "expiry: a duration from now (720h) or an RFC 3339 time")
	_ = create.MarkFlagRequired("project")

	var project, status string
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List keys (all pages)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var all []api.KeyJSON
			cursor := ""
			for {
				q := url.Values{}
				if project != "" {
					q.Set("project", project)
				}
				if status != "" {
					q.Set("status", status)
				}
				q.Set("limit", strconv.Itoa(limit))
				if cursor != "" {
					q.Set("cursor", cursor)
				}
				var page api.KeyList
				if _, err := cf.do("GET", "/v1/keys", q, nil, &page); err != nil {
					return err
				}
				all = append(all, page.Keys...)
				if page.Next == "" {
					break
				}
				cursor = page.Next
			}
			if cf.json() {
				return writeJSONOut(all)
			}
			printKeys(all...)
			return nil
		},
	}
	list.Flags().StringVar(&project, "project", "", "only this project")
	list.Flags().StringVar(&status, "status", "", "only this status: active, suspended, revoked, deleted")
	list.Flags().IntVar(&limit, "page-size", 500, "keys per API page")

	simple := func(use, short, path string, body func() any) *cobra.Command {
		return &cobra.Command{
			Use: use + " KEY_ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				var k api.KeyJSON
				var b any
				if body != nil {
					b = body()
				}
				method := "POST"
				if path == "" {
					method = "GET"
				}
				raw, err := cf.do(method, "/v1/keys/"+url.PathEscape(args[0])+path, nil, b, &k)
				if err != nil {
					return err
				}
				showOne(raw, k)
				return nil
			},
		}
	}
	show := simple("show", "Show a key", "", nil)
	var reason string
	revoke := simple("revoke", "Revoke a key: every verifier refuses it within milliseconds", "/revoke", func() any { return api.RevokeRequest{Reason: reason} })
	revoke.Flags().StringVar(&reason, "reason", "revoked by admin", "why (kept with the key)")
	suspend := simple("suspend", "Suspend a key (refused until resumed)", "/suspend", nil)
	resume := simple("resume", "Resume a suspended key", "/resume", nil)

	var grace time.Duration
	rotate := &cobra.Command{
		Use: "rotate KEY_ID", Short: "Issue a new key replacing this one; the old one verifies until --grace ends", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out api.CreatedJSON
			if grace < 0 || grace > 9999*time.Hour {
				return fmt.Errorf("--grace %s: accepted 0 to 9999h", grace)
			}
			g := grace.Round(time.Second)
			gs := fmt.Sprintf("%dh%dm%ds", g/time.Hour, g%time.Hour/time.Minute, g%time.Minute/time.Second)
			raw, err := cf.do("POST", "/v1/keys/"+url.PathEscape(args[0])+"/rotate", nil, api.RotateRequest{GracePeriod: &gs}, &out)
			if err != nil {
				return err
			}
			showCreated(raw, out)
			return nil
		},
	}
	rotate.Flags().DurationVar(&grace, "grace", 24*time.Hour, "how long the old key keeps verifying")

	var up struct {
		rate, throttle   float64
		burst            uint32
		quota            uint64
		scopes, cidrs    []string
		expires, name    string
		kind             string
		throttleDuration time.Duration
	}
	update := &cobra.Command{
		Use: "update KEY_ID", Short: "Change a key's limits, scopes, networks, expiry or throttle (only the flags given)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req api.UpdateKeyRequest
			fl := cmd.Flags()
			if fl.Changed("name") {
				req.Name = &up.name
			}
			if fl.Changed("kind") {
				req.Kind = &up.kind
			}
			if fl.Changed("rate") {
				req.RateLimitPerS = &up.rate
			}
			if fl.Changed("burst") {
				req.RateBurst = &up.burst
			}
			if fl.Changed("quota") {
				req.MonthlyQuota = &up.quota
			}
			if fl.Changed("scopes") {
				req.Scopes = &up.scopes
			}
			if fl.Changed("cidrs") {
				req.AllowedCIDRs = &up.cidrs
			}
			if fl.Changed("expires") {
				t, err := time.Parse(time.RFC3339, up.expires)
				if err != nil {
					return fmt.Errorf("--expires %q: want an RFC 3339 time", up.expires)
				}
				req.ExpiresAt = &t
			}
			if fl.Changed("throttle") {
				until := time.Now().Add(up.throttleDuration).UTC()
				req.ThrottlePerS, req.ThrottleUntil = &up.throttle, &until
			}
			var k api.KeyJSON
			raw, err := cf.do("PATCH", "/v1/keys/"+url.PathEscape(args[0]), nil, req, &k)
			if err != nil {
				return err
			}
			showOne(raw, k)
			return nil
		},
	}
	uf := update.Flags()
	uf.StringVar(&up.name, "name", "", "new name")
	uf.StringVar(&up.kind, "kind", "", "what the key is embedded in: server, browser, mobile or batch")
	uf.Float64Var(&up.rate, "rate", 0, "requests per second (0: unlimited)")
	uf.Uint32Var(&up.burst, "burst", 0, "burst size")
	uf.Uint64Var(&up.quota, "quota", 0, "requests per month (0: unlimited)")
	uf.StringSliceVar(&up.scopes, "scopes", nil, "scopes (replaces the list)")
	uf.StringSliceVar(&up.cidrs, "cidrs", nil, "allowed client networks (replaces the list)")
	uf.StringVar(&up.expires, "expires", "", "expiry, RFC 3339")
	uf.Float64Var(&up.throttle, "throttle", 0, "throttle to this many requests per second")
	uf.DurationVar(&up.throttleDuration, "throttle-for", time.Hour, "how long the throttle lasts")

	del := &cobra.Command{
		Use: "delete KEY_ID", Short: "Delete a key", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := cf.do("DELETE", "/v1/keys/"+url.PathEscape(args[0]), nil, nil, nil); err != nil {
				return err
			}
			fmt.Println("deleted", args[0])
			return nil
		},
	}
	var leakSource, leakURL string
	reportLeak := &cobra.Command{
		Use:   "report-leak SECRET|-",
		Short: "Report a leaked secret: only its SHA-256 is sent; the key is revoked (or alerted on) by the server's leak policy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			secret := args[0]
			if secret == "-" {
				b, err := io.ReadAll(os.Stdin)
				if err != nil {
					return err
				}
				secret = strings.TrimSpace(string(b))
			}
			sum := sha256.Sum256([]byte(secret))
			var l leaks.Label
			raw, err := cf.do("POST", "/v1/leaks/hash", nil, api.LeakHashRequest{TokenSHA256: hex.EncodeToString(sum[:]), Source: leakSource, URL: leakURL}, &l)
			if err != nil {
				return err
			}
			if cf.json() {
				printJSON(raw)
				return nil
			}
			fmt.Println(l.Label)
			return nil
		},
	}
	reportLeak.Flags().StringVar(&leakSource, "source", "operator", "where the secret was found")
	reportLeak.Flags().StringVar(&leakURL, "url", "", "link to where it was found")
	c.AddCommand(create, list, show, rotate, revoke, suspend, resume, update, del, reportLeak)
	return c
}
