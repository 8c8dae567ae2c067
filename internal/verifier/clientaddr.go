package verifier

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// The headers that may carry the chain of client addresses.
const (
	HeaderXForwardedFor = "X-Forwarded-For"
	HeaderForwarded     = "Forwarded" // RFC 7239
)

// ClientAddr is the one algorithm that finds a request's client address, in
// every mode (proxy, forward auth, middleware):
//
//  1. The peer (remoteAddr) is the answer unless it is in trusted.
//  2. Otherwise the hops of the forwarding header (values, the header's
//     lines in order: X-Forwarded-For, or RFC 7239 Forwarded when forwarded
//     is true) are walked from the right, each one written by the hop to
//     its right. The first address that is not in trusted is the answer.
//  3. A hop that is not an address (garbage, "unknown", an obfuscated
//     RFC 7239 identifier, a Forwarded element without for=) stops the
//     walk, as does the end of the list: the answer is then the last
//     address walked, i.e. the trusted proxy that reported the hop (the
//     peer itself when it sent no usable header).
//
// No other header (X-Real-Ip included) is read. Whatever a client writes to
// the left of the first trusted proxy's entry is never used unless the
// client's own address is in trusted, so --trusted-proxy must list proxies
// only. An entry may carry a port ("203.0.113.7:4711", "[2001:db8::1]:80");
// IPv4-mapped IPv6 addresses are unmapped and zones dropped.
//
// The string is the address as sent when that is its canonical form (no
// allocation), else its canonical form; for an unparsable peer it is the
// peer's host as given.
func ClientAddr(remoteAddr string, values []string, forwarded bool, trusted []netip.Prefix) (netip.Addr, string) {
	host := remoteAddr
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, host
	}
	peer = peer.Unmap().WithZone("")
	last, lastStr := peer, host
	if !isTrusted(trusted, peer) {
		return peer, addrString(peer, host)
	}
	// Walk the header lines from the last, each line's elements from the
	// right. A trusted proxy appends to the right, so nothing a client
	// wrote to the left can change how the right part splits.
	for i := len(values) - 1; i >= 0; i-- {
		line := values[i]
		for line != "" {
			j := strings.LastIndexByte(line, ',')
			elem := line[j+1:]
			line = line[:max(j, 0)]
			if j < 0 {
				line = ""
			}
			tok := elem
			if forwarded {
				var ok bool
				if tok, ok = forwardedFor(elem); !ok {
					return last, addrString(last, lastStr)
				}
			}
			a, ok := parseHop(tok)
			if !ok {
				return last, addrString(last, lastStr)
			}
			last, lastStr = a, strings.Trim(tok, " \t")
			if !isTrusted(trusted, a) {
				return a, addrString(a, lastStr)
			}
		}
	}
	return last, addrString(last, lastStr)
}

// parseHop parses one hop: an address, optionally bracketed (IPv6) and
// with a port.
func parseHop(s string) (netip.Addr, bool) {
	s = strings.Trim(s, " \t")
	if s == "" {
		return netip.Addr{}, false
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() {
			return a.Unmap().WithZone(""), true
		}
	}
	return netip.Addr{}, false
}

// forwardedFor returns the for= value of one RFC 7239 forwarded-element
// ("for=192.0.2.60;proto=http;by=203.0.113.43"), unquoted.
func forwardedFor(elem string) (string, bool) {
	for elem != "" {
		var pair string
		pair, elem, _ = strings.Cut(elem, ";")
		k, v, ok := strings.Cut(strings.Trim(pair, " \t"), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
			if strings.ContainsAny(v, `\"`) {
				// Escapes never occur in an address: not one.
				return "", false
			}
		}
		return v, true
	}
	return "", false
}

// addrString returns raw when it is a's canonical form, else a.String().
func addrString(a netip.Addr, raw string) string {
	if !a.IsValid() {
		return raw
	}
	var buf [64]byte
	if string(a.AppendTo(buf[:0])) == raw {
		return raw
	}
	return a.String()
}

func isTrusted(trusted []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientIP applies ClientAddr to r with the configured header.
func (s *Server) clientIP(r *http.Request) (netip.Addr, string) {
	name := HeaderXForwardedFor
	if s.cfg.forwarded() {
		name = HeaderForwarded
	}
	return ClientAddr(r.RemoteAddr, r.Header.Values(name), s.cfg.forwarded(), s.cfg.TrustedProxies)
}
