package api

import (
	"net/http"
	"slices"

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
	c, err := console.New(console.Config{API: s, Logger: s.log, Sources: src,
		Role: func(tok string) string {
			if r := s.roleOf(&http.Request{Header: http.Header{"Authorization": {"Bearer " + tok}}}); r != RoleNone {
				return r.String()
			}
			return ""
		}})
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
