package console

import (
	"context"
	"time"

	"github.com/keymeter/keymeter/internal/store"
)

// profileWindow is how much history a key's behaviour profile reads.
const profileWindow = 7 * 24 * time.Hour

// keyProfile is a key's behaviour over the last week, computed from its
// stored events with the same notions the detector's profiles learn
// (internal/detect/profile.go): where it is used from (countries, ASNs,
// addresses), when (hour of day), how fast (requests per active minute,
// usual and peak), and whether it is old enough to be judged (mature
// after 12 hours of history).
type keyProfile struct {
	From, First, Last time.Time
	Requests          uint64
	Addresses         uint64
	Networks          uint64 // distinct /24 (IPv4) or /48 (IPv6) client networks
	Countries         []countryCount
	ASNs              []countryCount // Country holds "AS<n>"
	Hours             [24]uint64     // requests by hour of day (UTC)
	HourMax           uint64
	ActiveMinutes     uint64
	PerMinuteP50      float64
	PerMinuteP99      float64
	PerMinuteMax      uint64
	Mature            bool
}

// HourBar is the height (0-100) of hour h's bar.
func (p *keyProfile) HourBar(h int) int {
	if p.HourMax == 0 {
		return 0
	}
	return int(p.Hours[h] * 100 / p.HourMax)
}

func (p *keyProfile) HourList() []int {
	out := make([]int, 24)
	for i := range out {
		out[i] = i
	}
	return out
}

// PerMinuteMean is the mean number of requests in a minute with any.
func (p *keyProfile) PerMinuteMean() float64 {
	if p.ActiveMinutes == 0 {
		return 0
	}
	return float64(p.Requests) / float64(p.ActiveMinutes)
}

// profileOf reads a key's profile from the store. Every query is bounded
// to the key's own rows of the window (the table is ordered by project,
// key, time).
func profileOf(ctx context.Context, st *store.DB, project, keyID string, now time.Time) (*keyProfile, error) {
	p := &keyProfile{From: now.Add(-profileWindow)}
	params := store.Params{}.Str("project", project).Str("key", keyID).Ms("from", p.From)
	tbl := "`" + st.Database() + "`.requests"
	where := " FROM " + tbl + " WHERE project = {project:String} AND key_id = {key:String} AND time >= fromUnixTimestamp64Milli({from:Int64}, 'UTC')"
	q := func(sql string, scan func(store.Rows) error) error {
		return store.EachRow(ctx, st.Conn(), sql, params, scan)
	}
	var first, last int64
	err := q("SELECT toUInt64(count()), toUInt64(uniq(client_ip)), toUInt64(uniq(if(isIPv4String(client_ip), IPv4NumToStringClassC(toIPv4OrZero(client_ip)), cutIPv6(toIPv6OrZero(client_ip), 10, 0)))), toInt64(toUnixTimestamp64Milli(min(time))), toInt64(toUnixTimestamp64Milli(max(time)))"+where,
		func(r store.Rows) error { return r.Scan(&p.Requests, &p.Addresses, &p.Networks, &first, &last) })
	if err != nil || p.Requests == 0 {
		return p, err
	}
	p.First, p.Last = time.UnixMilli(first).UTC(), time.UnixMilli(last).UTC()
	p.Mature = now.Sub(p.First) >= 12*time.Hour
	top := func(col string, out *[]countryCount, label func(string) string) error {
		return q("SELECT toString("+col+") AS v, toUInt64(count()) AS n"+where+" GROUP BY v ORDER BY n DESC, v LIMIT 8", func(r store.Rows) error {
			var v string
			var n uint64
			if err := r.Scan(&v, &n); err != nil {
				return err
			}
			*out = append(*out, countryCount{Country: label(v), Requests: n})
			return nil
		})
	}
	unknown := func(v string) string {
		if v == "" {
			return "unknown"
		}
		return v
	}
	if err := top("country", &p.Countries, unknown); err != nil {
		return p, err
	}
	if err := top("asn", &p.ASNs, func(v string) string {
		if v == "0" {
			return "unknown"
		}
		return "AS" + v
	}); err != nil {
		return p, err
	}
	if err := q("SELECT toUInt64(toHour(time)) AS h, toUInt64(count())"+where+" GROUP BY h", func(r store.Rows) error {
		var h, n uint64
		if err := r.Scan(&h, &n); err != nil {
			return err
		}
		if h < 24 {
			p.Hours[h] = n
			p.HourMax = max(p.HourMax, n)
		}
		return nil
	}); err != nil {
		return p, err
	}
	err = q("SELECT toUInt64(count()), toFloat64(quantileExact(0.5)(c)), toFloat64(quantileExact(0.99)(c)), toUInt64(max(c)) FROM (SELECT toStartOfMinute(time) AS m, count() AS c"+
		where+" GROUP BY m)", func(r store.Rows) error {
		return r.Scan(&p.ActiveMinutes, &p.PerMinuteP50, &p.PerMinuteP99, &p.PerMinuteMax)
	})
	return p, err
}
