package verifier

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// Front is the proxy in front of a forward-auth endpoint: the headers in
// which it describes the original request. The verifier reads the original
// method, URI and host from these headers only, and each shipped example in
// deploy/proxy sets them itself (replacing any client-sent value) and
// strips the others. The client address comes from the forwarding header
// (HTTPConfig.ForwardedHeader) through ClientAddr, as in every mode.
type Front struct {
	// Name is nginx, envoy, traefik, caddy, or custom.
	Name string
	// MethodHeader, URIHeader and HostHeader carry the original method,
	// request URI (origin form, path and query as the client sent them)
	// and host. "" means the subrequest itself is the original request
	// (Envoy ext_authz: its method, path and Host).
	MethodHeader, URIHeader, HostHeader string
	// Deny403 answers refusals with status 429 as 403 with the real status
	// in X-Keymeter-Status: nginx auth_request only knows 2xx, 401, 403.
	Deny403 bool
}

// Fronts are the supported fronts, each a fixed header set.
var Fronts = map[string]Front{
	// deploy/proxy/nginx.conf: proxy_set_header in the auth_request
	// location replaces any client value of these.
	"nginx": {Name: "nginx", MethodHeader: "X-Original-Method", URIHeader: "X-Original-Uri", HostHeader: "X-Original-Host", Deny403: true},
	// ext_authz HTTP service without path_prefix: the check request has
	// the original method, path and Host.
	"envoy": {Name: "envoy"},
	// Traefik forwardAuth and Caddy forward_auth set these themselves.
	"traefik": {Name: "traefik", MethodHeader: "X-Forwarded-Method", URIHeader: "X-Forwarded-Uri", HostHeader: "X-Forwarded-Host"},
	"caddy":   {Name: "caddy", MethodHeader: "X-Forwarded-Method", URIHeader: "X-Forwarded-Uri", HostHeader: "X-Forwarded-Host"},
}

// FrontNames lists the names accepted by ParseFront.
func FrontNames() []string {
	names := make([]string, 0, len(Fronts))
	for n := range Fronts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ParseFront returns the named front with the given header names, when not
// empty, replacing its own. Without a name, the method and URI headers are
// required (a custom front).
func ParseFront(name, methodHeader, uriHeader, hostHeader string) (Front, error) {
	var f Front
	if name != "" {
		var ok bool
		if f, ok = Fronts[strings.ToLower(name)]; !ok {
			return Front{}, fmt.Errorf("--front %q: accepted values are %s", name, strings.Join(FrontNames(), ", "))
		}
	} else {
		if methodHeader == "" || uriHeader == "" {
			return Front{}, fmt.Errorf("forward auth needs --front (%s), or --front-method-header and --front-uri-header naming the headers your proxy sets", strings.Join(FrontNames(), ", "))
		}
		f.Name = "custom"
	}
	for _, h := range []struct {
		flag, v string
		dst     *string
	}{{"--front-method-header", methodHeader, &f.MethodHeader}, {"--front-uri-header", uriHeader, &f.URIHeader}, {"--front-host-header", hostHeader, &f.HostHeader}} {
		if h.v == "" {
			continue
		}
		if !validHeaderName(h.v) {
			return Front{}, fmt.Errorf("%s %q: not a header name", h.flag, h.v)
		}
		*h.dst = h.v
	}
	if (f.MethodHeader == "") != (f.URIHeader == "") {
		return Front{}, fmt.Errorf("front %s: --front-method-header and --front-uri-header go together", f.Name)
	}
	return f, nil
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

// isTchar: RFC 9110 token characters.
func isTchar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// headerOnce returns the single value of a header the front sets; ok is
// false when it is absent or sent more than once (a front replaces the
// header, so two values mean something else wrote one).
func headerOnce(h map[string][]string, name string) (v string, present, ok bool) {
	vs := h[name]
	switch len(vs) {
	case 0:
		return "", false, false
	case 1:
		return vs[0], true, true
	default:
		return "", true, false
	}
}

// routePath is the path routes are matched on and events record, taken
// from a request path as it is forwarded (escaped form): percent-decoded.
// keymeter never decides on a path other than the one the upstream gets,
// so it refuses (ok false) every path that a proxy, a framework or the
// upstream might resolve to another one: not absolute, dot segments ("."
// or ".."), empty segments ("//"), a backslash, a ";" (path parameters:
// Tomcat and Spring read "/..;/" as "/../"), a NUL, an escape that does
// not decode, and the escapes %2F %5C %2E %25 and %00 in any case (an
// encoded "/", "\", ".", a double encoding). What is left decodes to
// the same segments the upstream sees.
func routePath(raw string) (string, bool) {
	if raw == "" || raw[0] != '/' {
		return "", false
	}
	esc := false
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; c {
		case '\\', ';', 0:
			return "", false
		case '%':
			if i+2 >= len(raw) || !ishex(raw[i+1]) || !ishex(raw[i+2]) {
				return "", false
			}
			switch b := unhex(raw[i+1])<<4 | unhex(raw[i+2]); b {
			case '/', '\\', '.', '%', 0:
				return "", false
			}
			esc = true
			i += 2
		case '/':
			// The segment after this slash: not empty unless it ends the
			// path, not "." or "..".
			seg := raw[i+1:]
			if k := strings.IndexByte(seg, '/'); k >= 0 {
				seg = seg[:k]
				if k == 0 {
					return "", false
				}
			}
			if seg == "." || seg == ".." {
				return "", false
			}
		}
	}
	if !esc {
		return raw, true
	}
	p, err := url.PathUnescape(raw)
	if err != nil {
		return "", false
	}
	return p, true
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// validMethod reports whether m is an HTTP method token.
func validMethod(m string) bool {
	return len(m) <= 32 && validHeaderName(m)
}
