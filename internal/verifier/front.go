package verifier

import (
	"fmt"
	"net/url"
	"path"
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

// canonicalPath is the path routes are matched on and events record:
// percent-decoded when decode is true (a raw request URI), dot segments
// and repeated slashes resolved, a trailing slash kept. A proxy or an
// upstream that resolves /public/../admin serves /admin, so the decision
// is about /admin. ok is false for what is not an absolute path or does
// not decode.
func canonicalPath(p string, decode bool) (string, bool) {
	if decode && strings.IndexByte(p, '%') >= 0 {
		u, err := url.PathUnescape(p)
		if err != nil {
			return "", false
		}
		p = u
	}
	if p == "" || p[0] != '/' {
		return "", false
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", false
	}
	c := path.Clean(p) // no allocation when p is clean already
	if c != "/" && p[len(p)-1] == '/' {
		if len(p) == len(c)+1 && p[:len(c)] == c {
			return p, true
		}
		c += "/"
	}
	return c, true
}

// validMethod reports whether m is an HTTP method token.
func validMethod(m string) bool {
	return len(m) <= 32 && validHeaderName(m)
}
