package api

import (
	"net/http"

	"github.com/keymeter/keymeter/internal/console"
)

// mountConsole serves the web console at /console on the API's listener,
// with / redirecting there. The console calls this server in-process with
// the signed-in admin token, so every rule of the API applies to it.
func (s *Server) mountConsole() {
	c, err := console.New(console.Config{API: s, Logger: s.log, Sources: s.cfg.Console,
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
