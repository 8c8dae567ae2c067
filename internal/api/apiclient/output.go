package apiclient

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/event"
)

// The API's answers as the CLI prints them: indented JSON, or aligned tables
// whose columns are the fields people read first.

// WriteJSON writes v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Table prints rows under a header, aligned.
func Table(w io.Writer, header []string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

// FmtTime is t in RFC 3339 UTC, or "-" for none.
func FmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// PrintKeys prints keys as a table.
func PrintKeys(w io.Writer, ks ...api.KeyJSON) {
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
		status := k.Status
		switch {
		case k.Status == "active" && k.Retired:
			status = "retired" // rotated out, its grace over: refused
		case k.Status == "active" && k.GraceUntil != nil:
			status = "rotated" // rotated out, verifying until its grace ends
		}
		rows = append(rows, []string{k.ID, k.Project, k.Name, k.Kind, k.DisplayPrefix + "…", status, rate, quota, FmtTime(k.ExpiresAt)})
	}
	Table(w, []string{"ID", "PROJECT", "NAME", "KIND", "KEY", "STATUS", "RATE", "QUOTA", "EXPIRES"}, rows)
}

// PrintCreated prints a new key with its secret, shown this once.
func PrintCreated(w io.Writer, cr api.CreatedJSON) {
	fmt.Fprintf(w, "secret: %s\n(shown once: keymeter keeps only its SHA-256)\n\n", cr.Secret)
	PrintKeys(w, cr.Key)
}

// PrintUsage prints usage points as a table.
func PrintUsage(w io.Writer, u api.UsageResponse) {
	rows := [][]string{}
	for _, p := range u.Points {
		rows = append(rows, []string{p.Start.UTC().Format(time.RFC3339), p.Outcome, p.Route, p.Country,
			strconv.FormatUint(p.Requests, 10), strconv.FormatUint(p.Allowed, 10), strconv.FormatUint(p.BytesOut, 10),
			strconv.FormatUint(p.CostUnits, 10), strconv.FormatUint(p.UniqueIPs, 10)})
	}
	Table(w, []string{"START", "OUTCOME", "ROUTE", "COUNTRY", "REQUESTS", "ALLOWED", "BYTES_OUT", "COST", "UNIQUE_IPS"}, rows)
}

// PrintEvents prints request events as a table.
func PrintEvents(w io.Writer, evs []event.Event) {
	rows := make([][]string, 0, len(evs))
	for _, e := range evs {
		rows = append(rows, []string{e.Time.UTC().Format("2006-01-02T15:04:05.000Z"), e.KeyID, e.Outcome.String(), strconv.Itoa(int(e.Status)),
			e.Method, e.Route, e.ClientIP, e.Country, strconv.FormatUint(uint64(e.LatencyUS), 10)})
	}
	Table(w, []string{"TIME", "KEY", "OUTCOME", "STATUS", "METHOD", "ROUTE", "IP", "COUNTRY", "LATENCY_US"}, rows)
}

// FollowHeader is the header line of PrintFollowed's lines.
const FollowHeader = "TIME\tKEY\tOUTCOME\tSTATUS\tMETHOD\tROUTE\tIP\tCOUNTRY"

// PrintFollowed prints one event as logs --follow does: a JSON line, or a
// tab-separated line under FollowHeader.
func PrintFollowed(w io.Writer, e *event.Event, asJSON bool) {
	if asJSON {
		b, _ := e.MarshalJSON()
		fmt.Fprintln(w, string(b))
		return
	}
	fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", e.Time.UTC().Format("15:04:05.000"), e.KeyID, e.Outcome, e.Status, e.Method, e.Route, e.ClientIP, e.Country)
}

// PrintDecisions prints detection decisions as a table.
func PrintDecisions(w io.Writer, ds []api.DecisionJSON) {
	rows := [][]string{}
	for _, d := range ds {
		rows = append(rows, []string{d.Time.UTC().Format(time.RFC3339), d.RuleID, d.Action, d.Mode, d.Group, d.KeyID, d.Reason})
	}
	Table(w, []string{"TIME", "RULE", "ACTION", "MODE", "GROUP", "KEY", "REASON"}, rows)
}
