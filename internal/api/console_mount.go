package api

import (
	"cmp"
	"net/http"
	"slices"
	"strings"

	"github.com/keymeter/keymeter/internal/console"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
)

// mountConsole serves the web console at /console on the API's listener,
// with / redirecting there. The console calls this server in-process with
// the signed-in admin token, so every rule of the API applies to it.
func (s *Server) mountConsole() {
	src := s.cfg.Console
	if src.KeyCounts == nil && s.cfg.KeyTable != nil {
		src.KeyCounts = func() (map[string]int, []string) { return keyCounts(s.cfg.KeyTable) }
	}
	if src.QuotaKeys == nil && s.cfg.KeyTable != nil {
		src.QuotaKeys = func(project string, n int) ([]string, map[string]int) { return quotaTop(s.cfg.KeyTable, project, n) }
	}
	c, err := console.New(console.Config{API: s, Sources: src,
		Role: func(tok string) string {
			if r := s.roleOf(&http.Request{Header: http.Header{"Authorization": {"Bearer " + tok}}}); r != RoleNone {
				return r.String()
			}
			return ""
		}}, console.WithLogger(s.log))
	if err != nil {
		panic(err) // the console's templates are embedded: a test catches this
	}
	s.mux.Handle(console.Prefix+"/", c)
	s.mux.Handle("GET "+console.Prefix, c)
	s.mux.Handle("GET /{$}", http.RedirectHandler(console.Prefix+"/", http.StatusFound))
}

// keyCounts counts the table's keys by status and lists their projects,
// sorted, without copying any key.
func keyCounts(t *keys.Table) (map[string]int, []string) {
	by := map[string]int{}
	seen := map[string]bool{}
	var projects []string
	t.States(func(st *keymeterv1.KeyState) bool {
		by[enumName(st.GetStatus().String(), "KEY_STATUS_")]++
		if p := st.GetProject(); !seen[p] {
			seen[p] = true
			projects = append(projects, p)
		}
		return false
	})
	slices.Sort(projects)
	return by, projects
}

// quotaTop is a project's n keys with the most quota used (ties by id) and
// its keys by quota state, without copying any key.
func quotaTop(t *keys.Table, project string, n int) ([]string, map[string]int) {
	type used struct {
		id string
		n  uint64
	}
	var all []used
	states := map[string]int{}
	t.States(func(st *keymeterv1.KeyState) bool {
		if st.GetProject() != project {
			return false
		}
		if q := st.GetQuotaState(); q != keymeterv1.QuotaState_QUOTA_STATE_UNSPECIFIED {
			states[enumName(q.String(), "QUOTA_STATE_")]++
		}
		all = append(all, used{st.GetId(), st.GetQuotaUsed()})
		return false
	})
	slices.SortFunc(all, func(a, b used) int {
		if a.n != b.n {
			return cmp.Compare(b.n, a.n)
		}
		return strings.Compare(a.id, b.id)
	})
	ids := make([]string, 0, min(n, len(all)))
	for _, u := range all[:min(n, len(all))] {
		ids = append(ids, u.id)
	}
	return ids, states
}
