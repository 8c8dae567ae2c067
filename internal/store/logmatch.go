package store

import (
	"net/netip"

	"github.com/keymeter/keymeter/internal/event"
)

// Matcher is q as a test on one event, for following the log live (logs
// --follow) with the filters a query takes. From, To, Limit and Cursor
// are not part of it.
func (q LogQuery) Matcher() func(*event.Event) bool {
	var prefix netip.Prefix
	if q.ClientIP != "" {
		if p, err := netip.ParsePrefix(q.ClientIP); err == nil {
			prefix = p.Masked()
		} else if a, err := netip.ParseAddr(q.ClientIP); err == nil {
			prefix = netip.PrefixFrom(a, a.BitLen())
		}
	}
	return func(e *event.Event) bool {
		switch {
		case q.KeyID != "" && e.KeyID != q.KeyID, q.Project != "" && e.Project != q.Project,
			q.Outcome != "" && e.Outcome.String() != q.Outcome, q.Route != "" && e.Route != q.Route,
			q.Country != "" && e.Country != q.Country,
			q.StatusMin != 0 && (e.Status < q.StatusMin || e.Status > q.StatusMax):
			return false
		}
		if prefix.IsValid() {
			a, err := netip.ParseAddr(e.ClientIP)
			if err != nil || !prefix.Contains(a) {
				return false
			}
		}
		return true
	}
}
