package console

import (
	"context"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/keymeter/keymeter/internal/store"
)

// A project's usage chart sums every key of the project: at 100M stored
// events and 100k keys that is ~23M per-minute rollup rows for a week by
// hour. The API's usage query also merges the unique-address sketches of
// every row, which the chart does not show and which costs most of the
// time (3.4 s against 0.4 s), so with a store at hand the console sums the
// requests itself, and keeps each project chart for a minute (the past
// does not change; the last bucket is at most a minute behind).
const projectChartTTL = time.Minute

type projectChartCache struct {
	mu sync.Mutex
	m  map[string]cachedChart
}

type cachedChart struct {
	at time.Time
	ch chart
}

func (pc *projectChartCache) get(k string, now time.Time) (chart, bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	c, ok := pc.m[k]
	if !ok || now.Sub(c.at) > projectChartTTL {
		return chart{}, false
	}
	return c.ch, true
}

func (pc *projectChartCache) put(k string, ch chart, now time.Time) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.m == nil || len(pc.m) >= 256 {
		pc.m = map[string]cachedChart{}
	}
	pc.m[k] = cachedChart{at: now, ch: ch}
}

// projectChart is a project's requests by outcome over the granularity's
// window.
func (c *Console) projectChart(r *http.Request, s *session, project, gran string) (chart, error) {
	st := c.cfg.Sources.Store
	if st == nil {
		return c.usageChart(r, s, url.Values{"project": {project}}, gran)
	}
	win, ok := granularityWindow[gran]
	if !ok {
		gran, win = "hour", granularityWindow["hour"]
	}
	now := time.Now().UTC()
	key := gran + "\x00" + project
	if ch, ok := c.charts.get(key, now); ok {
		return ch, nil
	}
	pts, err := projectUsage(r.Context(), st, project, gran, now.Add(-win).Truncate(time.Minute), now.Add(time.Minute).Truncate(time.Minute))
	if err != nil {
		c.log.Warn("console: project usage", "project", project, "err", err)
		return chart{}, &apiError{Status: 500, Code: "internal", Message: "the project's usage could not be read from the store"}
	}
	ch := buildChart(pts)
	c.charts.put(key, ch, now)
	return ch, nil
}

// projectUsage sums a project's requests by bucket and outcome from the
// rollups (per minute for minute and hour, per day for day), as the API's
// usage query does, without the sketches.
func projectUsage(ctx context.Context, st *store.DB, project, gran string, from, to time.Time) ([]usagePoint, error) {
	table, col, bucket := "requests_1m", "minute", "minute"
	lo, hi := "toDateTime({from:Int64}, 'UTC')", "toDateTime({to:Int64}, 'UTC')"
	switch gran {
	case "hour":
		bucket = "toStartOfHour(minute)"
	case "day":
		table, col, bucket = "requests_1d", "day", "toDateTime(day, 'UTC')"
		lo, hi = "toDate(toDateTime({from:Int64}, 'UTC'))", "toDate(toDateTime({to:Int64} - 1, 'UTC')) + 1"
	}
	sql := "SELECT toInt64(toUnixTimestamp(" + bucket + ")) AS b, toString(outcome) AS o, toUInt64(sum(requests)) FROM `" + st.Database() + "`." + table +
		" WHERE project = {project:String} AND " + col + " >= " + lo + " AND " + col + " < " + hi + " GROUP BY b, o ORDER BY b, o LIMIT 100000"
	rows, err := st.Conn().Query(ctx, sql, store.Params{}.Str("project", project).I64("from", from.Unix()).I64("to", to.Unix()))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []usagePoint
	for rows.Next() {
		var b int64
		var p usagePoint
		if err := rows.Scan(&b, &p.Outcome, &p.Requests); err != nil {
			return nil, err
		}
		p.Start = time.Unix(b, 0).UTC()
		out = append(out, p)
	}
	return out, rows.Err()
}
