package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/api/apiclient"
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
	var reason string
	revoke := keyActionCmd(cf, "revoke", "Revoke a key: every verifier refuses it within milliseconds",
		func(c *cobra.Command, cl *apiclient.Client, id string) (api.KeyJSON, error) {
			return cl.RevokeKey(c.Context(), id, reason)
		})
	revoke.Flags().StringVar(&reason, "reason", "revoked by admin", "why (kept with the key)")
	c.AddCommand(keysCreateCmd(cf), keysListCmd(cf),
		keyActionCmd(cf, "show", "Show a key", func(c *cobra.Command, cl *apiclient.Client, id string) (api.KeyJSON, error) {
			return cl.Key(c.Context(), id)
		}),
		keysRotateCmd(cf), revoke,
		keyActionCmd(cf, "suspend", "Suspend a key (refused until resumed)", func(c *cobra.Command, cl *apiclient.Client, id string) (api.KeyJSON, error) {
			return cl.SuspendKey(c.Context(), id)
		}),
		keyActionCmd(cf, "resume", "Resume a suspended key", func(c *cobra.Command, cl *apiclient.Client, id string) (api.KeyJSON, error) {
			return cl.ResumeKey(c.Context(), id)
		}),
		keysUpdateCmd(cf), keysDeleteCmd(cf), keysReportLeakCmd(cf))
	return c
}

// showCreated prints a new key with its secret, shown this once.
func showCreated(cf *clientFlags, cr api.CreatedJSON) error {
	return cf.show(cr, func() { apiclient.PrintCreated(os.Stdout, cr) })
}

func keysCreateCmd(cf *clientFlags) *cobra.Command {
	var cr api.CreateKeyRequest
	var expires, env, kind string
	var rate float64
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a key; prints its secret once",
		Args:  cobra.NoArgs,
		RunE: cf.runE(func(cmd *cobra.Command, _ []string, cl *apiclient.Client) error {
			cr.Env = &env
			if cmd.Flags().Changed("kind") {
				cr.Kind = &kind
			}
			if rate != 0 {
				cr.RateLimitPerS = &rate
			}
			if expires != "" {
				t, err := apiclient.ParseExpiry(expires)
				if err != nil {
					return err
				}
				cr.ExpiresAt = &t
			}
			out, err := cl.CreateKey(cmd.Context(), cr)
			if err != nil {
				return err
			}
			return showCreated(cf, out)
		}),
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
	return create
}

func keysListCmd(cf *clientFlags) *cobra.Command {
	var kf apiclient.KeyFilter
	list := &cobra.Command{
		Use:   "list",
		Short: "List keys (all pages)",
		Args:  cobra.NoArgs,
		RunE: cf.runE(func(cmd *cobra.Command, _ []string, cl *apiclient.Client) error {
			all, err := cl.ListKeys(cmd.Context(), kf)
			if err != nil {
				return err
			}
			return cf.show(all, func() { apiclient.PrintKeys(os.Stdout, all...) })
		}),
	}
	list.Flags().StringVar(&kf.Project, "project", "", "only this project")
	list.Flags().StringVar(&kf.Status, "status", "", "only this status: active, suspended, revoked, deleted")
	list.Flags().IntVar(&kf.PageSize, "page-size", 500, "keys per API page")
	return list
}

// keyActionCmd is a command on one key whose answer is the key.
func keyActionCmd(cf *clientFlags, use, short string, call func(*cobra.Command, *apiclient.Client, string) (api.KeyJSON, error)) *cobra.Command {
	return &cobra.Command{
		Use: use + " KEY_ID", Short: short, Args: cobra.ExactArgs(1),
		RunE: cf.runE(func(cmd *cobra.Command, args []string, cl *apiclient.Client) error {
			k, err := call(cmd, cl, args[0])
			if err != nil {
				return err
			}
			return cf.show(k, func() { apiclient.PrintKeys(os.Stdout, k) })
		}),
	}
}

func keysRotateCmd(cf *clientFlags) *cobra.Command {
	var grace time.Duration
	rotate := &cobra.Command{
		Use: "rotate KEY_ID", Short: "Issue a new key replacing this one; the old one verifies until --grace ends", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if grace < 0 || grace > 9999*time.Hour {
				return fmt.Errorf("--grace %s: accepted 0 to 9999h", grace)
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			out, err := cl.RotateKey(cmd.Context(), args[0], grace)
			if err != nil {
				return err
			}
			return showCreated(cf, out)
		},
	}
	rotate.Flags().DurationVar(&grace, "grace", 24*time.Hour, "how long the old key keeps verifying")
	return rotate
}

func keysUpdateCmd(cf *clientFlags) *cobra.Command {
	var up apiclient.KeyUpdate
	update := keyActionCmd(cf, "update", "Change a key's limits, scopes, networks, expiry or throttle (only the flags given)",
		func(cmd *cobra.Command, cl *apiclient.Client, id string) (api.KeyJSON, error) {
			req, err := up.Request(cmd.Flags().Changed)
			if err != nil {
				return api.KeyJSON{}, err
			}
			return cl.UpdateKey(cmd.Context(), id, req)
		})
	uf := update.Flags()
	uf.StringVar(&up.Name, "name", "", "new name")
	uf.StringVar(&up.Kind, "kind", "", "what the key is embedded in: server, browser, mobile or batch")
	uf.Float64Var(&up.Rate, "rate", 0, "requests per second (0: unlimited)")
	uf.Uint32Var(&up.Burst, "burst", 0, "burst size")
	uf.Uint64Var(&up.Quota, "quota", 0, "requests per month (0: unlimited)")
	uf.StringSliceVar(&up.Scopes, "scopes", nil, "scopes (replaces the list)")
	uf.StringSliceVar(&up.CIDRs, "cidrs", nil, "allowed client networks (replaces the list)")
	uf.StringVar(&up.Expires, "expires", "", "expiry, RFC 3339")
	uf.Float64Var(&up.Throttle, "throttle", 0, "throttle to this many requests per second")
	uf.DurationVar(&up.ThrottleDuration, "throttle-for", time.Hour, "how long the throttle lasts")
	return update
}

func keysDeleteCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use: "delete KEY_ID", Short: "Delete a key", Args: cobra.ExactArgs(1),
		RunE: cf.runE(func(cmd *cobra.Command, args []string, cl *apiclient.Client) error {
			if err := cl.DeleteKey(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Println("deleted", args[0])
			return nil
		}),
	}
}

func keysReportLeakCmd(cf *clientFlags) *cobra.Command {
	var leakSource, leakURL string
	reportLeak := &cobra.Command{
		Use:   "report-leak SECRET|-",
		Short: "Report a leaked secret: only its SHA-256 is sent; the key is revoked (or alerted on) by the server's leak policy",
		Args:  cobra.ExactArgs(1),
		RunE: cf.runE(func(cmd *cobra.Command, args []string, cl *apiclient.Client) error {
			secret := args[0]
			if secret == "-" {
				b, err := io.ReadAll(os.Stdin)
				if err != nil {
					return err
				}
				secret = strings.TrimSpace(string(b))
			}
			l, err := cl.ReportLeakHash(cmd.Context(), apiclient.LeakRequest(secret, leakSource, leakURL))
			if err != nil {
				return err
			}
			return cf.show(l, func() { fmt.Println(l.Label) })
		}),
	}
	reportLeak.Flags().StringVar(&leakSource, "source", "operator", "where the secret was found")
	reportLeak.Flags().StringVar(&leakURL, "url", "", "link to where it was found")
	return reportLeak
}
