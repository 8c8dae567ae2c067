package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/api/apiclient"
	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/store"
)

func init() {
	register(newUsageCmd)
	register(newLogsCmd)
	register(newBillingCmd)
	register(newDecisionsCmd)
}

func newUsageCmd(g *globals) *cobra.Command {
	cf := &clientFlags{}
	var uf apiclient.UsageFilter
	c := &cobra.Command{
		Use:   "usage",
		Short: "Usage of a key or project per minute, hour, day or month (from the rollups)",
		Example: `  keymeter usage --key key_123 --granularity day
  keymeter usage --project proj_a --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z --granularity day --group-by outcome,country`,
		Args: cobra.NoArgs,
		RunE: cf.runE(func(cmd *cobra.Command, _ []string, cl *apiclient.Client) error {
			u, err := cl.Usage(cmd.Context(), uf.Values())
			if err != nil {
				return err
			}
			return cf.Show(u, func(w io.Writer) { apiclient.PrintUsage(w, u) })
		}),
	}
	cf.Bind(c.Flags())
	uf.Bind(c.Flags())
	return c
}

// logMatcher builds an event filter with the store's own validation.
func logMatcher(lf apiclient.LogFilter) (func(*event.Event) bool, error) {
	q, err := store.ParseLogQuery(lf.Values())
	if err != nil {
		return nil, err
	}
	return q.Matcher(), nil
}

func newLogsCmd(g *globals) *cobra.Command {
	cf := &clientFlags{}
	var (
		lf      apiclient.LogFilter
		limit   int
		cursor  string
		follow  bool
		bf      busFlags
		dur     time.Duration
		devData string
	)
	c := &cobra.Command{
		Use:   "logs",
		Short: "Search request logs, newest first; --follow tails them live from the bus",
		Example: `  keymeter logs --key key_123 --status 500-599 --limit 50
  keymeter logs --ip 203.0.113.0/24 --outcome rate_limited
  keymeter logs --follow --key key_123      # keymeter dev's bus, credentials from ./data
  keymeter logs --follow --nats-url nats://nats-1:4222 --nats-creds /etc/keymeter/nats.creds`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if follow {
				return followLogs(cmd.Context(), g, &bf, devData, lf, cf, dur)
			}
			q := lf.Values()
			q.Set("limit", strconv.Itoa(limit))
			if cursor != "" {
				q.Set("cursor", cursor)
			}
			cl, err := cf.Client()
			if err != nil {
				return err
			}
			page, err := cl.Logs(cmd.Context(), q)
			if err != nil {
				return err
			}
			if cf.JSON() {
				return apiclient.WriteJSON(os.Stdout, page)
			}
			apiclient.PrintEvents(os.Stdout, page.Events)
			if page.Next != "" {
				fmt.Fprintf(os.Stderr, "more: --cursor %s\n", page.Next)
			}
			return nil
		},
	}
	cf.Bind(c.Flags())
	f := c.Flags()
	lf.Bind(f)
	f.IntVar(&limit, "limit", 100, "events per page")
	f.StringVar(&cursor, "cursor", "", "the cursor printed after the previous page")
	f.BoolVar(&follow, "follow", false, "tail new events live from the bus (uses the bus flags, not the API)")
	f.DurationVar(&dur, "duration", 0, "with --follow: stop after this long")
	f.StringVar(&devData, "data-dir", "data", "with --follow and no --nats-url: the data dir of the keymeter dev to follow (its NATS credentials are there)")
	bf.add(f)
	return c
}

func followLogs(ctx context.Context, g *globals, bf *busFlags, devData string, lf apiclient.LogFilter, cf *clientFlags, d time.Duration) error {
	match, err := logMatcher(lf)
	if err != nil {
		return err
	}
	ctx, cancel := withDuration(ctx, d)
	defer cancel()
	if bf.Backend == "nats" && bf.NATSURL == "" {
		// keymeter dev's embedded server, with the credentials it made.
		bf.NATSURL = fmt.Sprintf("nats://127.0.0.1:%d", devNATSPort)
		if bf.NATSCreds == "" {
			bf.NATSCreds = natsCredsFile(devData)
		}
	}
	b, err := bf.open(ctx, "", g.Logger())
	if err != nil {
		return err
	}
	defer b.Close(context.Background())
	cons, err := b.NewConsumer(ctx, bus.ConsumerConfig{Group: fmt.Sprintf("logs-follow-%d", time.Now().UnixNano()), StartAtEnd: true})
	if err != nil {
		return err
	}
	defer cons.Close(context.Background())
	asJSON := cf.JSON()
	if !asJSON {
		fmt.Println(apiclient.FollowHeader)
	}
	return bus.TailEvents(ctx, cons, func(e *event.Event) {
		if match(e) {
			apiclient.PrintFollowed(os.Stdout, e, asJSON)
		}
	})
}

func newBillingCmd(g *globals) *cobra.Command {
	cf := &clientFlags{}
	c := &cobra.Command{Use: "billing", Short: "Billing line items per project and key"}
	var period, format, out string
	export := &cobra.Command{
		Use:   "export",
		Short: "Export a month's line items (csv or json); the same period gives the same bytes",
		Long: `Line items are allowed requests, bytes in, bytes out and cost units per project
and key, summing exactly to the raw events of the period. A period closes 48h
after its end: its line items are then fixed, and events that arrive later for
it are reported as late_events, not added. Exports only read; an admin closes
a month with keymeter billing close.`,
		Example: `  keymeter billing export --period 2026-11 --format csv > 2026-11.csv`,
		Args:    cobra.NoArgs,
		RunE: cf.runE(func(cmd *cobra.Command, _ []string, cl *apiclient.Client) error {
			if format != "csv" && format != "json" {
				return fmt.Errorf("--format %q: accepted values are csv, json", format)
			}
			raw, err := cl.Billing(cmd.Context(), period, format)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = os.Stdout.Write(raw)
				return err
			}
			return os.WriteFile(out, raw, 0o644)
		}),
	}
	export.Flags().StringVar(&period, "period", time.Now().UTC().Format("2006-01"), "month, e.g. 2026-11")
	export.Flags().StringVar(&format, "format", "csv", "csv or json")
	export.Flags().StringVar(&out, "out", "", "file to write (default stdout)")
	var closePeriod string
	closeCmd := &cobra.Command{
		Use:   "close",
		Short: "Close a month (admin token): its line items are recorded and every later export shows them",
		Long: `Closing is explicit: exports only read. A month can be closed once its end plus
48h (the grace for late events) has passed; closing a closed month changes
nothing. Prints the closed month's export as JSON.`,
		Example: `  keymeter billing close --period 2026-10`,
		Args:    cobra.NoArgs,
		RunE: cf.runE(func(cmd *cobra.Command, _ []string, cl *apiclient.Client) error {
			if closePeriod == "" {
				return fmt.Errorf("--period is required, e.g. --period 2026-10")
			}
			raw, err := cl.CloseBilling(cmd.Context(), closePeriod)
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(raw)
			return err
		}),
	}
	closeCmd.Flags().StringVar(&closePeriod, "period", "", "month to close, e.g. 2026-10 (required)")
	cf.Bind(c.PersistentFlags())
	c.AddCommand(export, closeCmd)
	return c
}

func newDecisionsCmd(g *globals) *cobra.Command {
	cf := &clientFlags{}
	var df apiclient.DecisionFilter
	c := &cobra.Command{
		Use:   "decisions",
		Short: "Detection decisions with their evidence, newest first",
		Args:  cobra.NoArgs,
		RunE: cf.runE(func(cmd *cobra.Command, _ []string, cl *apiclient.Client) error {
			out, err := cl.Decisions(cmd.Context(), df.Values())
			if err != nil {
				return err
			}
			if cf.JSON() {
				return apiclient.WriteJSON(os.Stdout, out)
			}
			apiclient.PrintDecisions(os.Stdout, out.Decisions)
			if out.Next != "" {
				fmt.Fprintf(os.Stderr, "more: --cursor %s\n", out.Next)
			}
			return nil
		}),
	}
	cf.Bind(c.Flags())
	df.Bind(c.Flags())
	return c
}
