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
	cf.Bind(c.PersistentFlags())
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
	return cf.Show(cr, func(w io.Writer) { apiclient.PrintCreated(w, cr) })
}

func keysCreateCmd(cf *clientFlags) *cobra.Command {
	var kc apiclient.KeyCreate
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a key; prints its secret once",
		Args:  cobra.NoArgs,
		RunE: cf.runE(func(cmd *cobra.Command, _ []string, cl *apiclient.Client) error {
			cr, err := kc.Request(cmd.Flags().Changed)
			if err != nil {
				return err
			}
			out, err := cl.CreateKey(cmd.Context(), cr)
			if err != nil {
				return err
			}
			return showCreated(cf, out)
		}),
	}
	kc.Bind(create.Flags())
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
			return cf.Show(all, func(w io.Writer) { apiclient.PrintKeys(w, all...) })
		}),
	}
	kf.Bind(list.Flags())
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
			return cf.Show(k, func(w io.Writer) { apiclient.PrintKeys(w, k) })
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
			cl, err := cf.Client()
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
	up.Bind(update.Flags())
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
			return cf.Show(l, func(w io.Writer) { fmt.Fprintln(w, l.Label) })
		}),
	}
	reportLeak.Flags().StringVar(&leakSource, "source", "operator", "where the secret was found")
	reportLeak.Flags().StringVar(&leakURL, "url", "", "link to where it was found")
	return reportLeak
}
