package verifier

import (
	"unicode/utf8"

	"github.com/keymeter/keymeter/internal/event"
)

// Bounds of the request-derived strings a usage event carries. Clients
// choose them (headers, the path), so each is cut to a fixed number of
// bytes, on a UTF-8 character boundary, before it becomes part of an
// event: one request's event stays a few KiB however large its headers,
// and a batch of events can be kept below the bus's message size (see
// batchLimit). The limits are documented with the event fields in
// schemas/usage-event.schema.json and README.md.
const (
	// MaxEventUserAgent bounds the User-Agent recorded (bytes).
	MaxEventUserAgent = 512
	// MaxEventHost bounds the Host recorded (bytes): a DNS name is at
	// most 253 characters, a port adds at most 6.
	MaxEventHost = 255
	// MaxEventRoute bounds the request path recorded (bytes).
	MaxEventRoute = 2048
	// MaxEventMethod bounds the method recorded (bytes); standard methods
	// are at most 7 bytes, extension methods (WebDAV) a little more.
	MaxEventMethod = 32
	// MaxEventClientIP bounds the client address recorded (bytes): an
	// IPv6 address with an IPv4 tail is at most 45 characters, a zone is
	// never recorded.
	MaxEventClientIP = 64
	// MaxEventIdentity bounds the project and key id recorded (bytes).
	// They come from the key table, not from the request, so this is only
	// a last guard.
	MaxEventIdentity = 256
)

// maxHeaderBytes is the verifier's http.Server MaxHeaderBytes: request
// line and headers together (Go allows 4 KiB more, and answers 431
// Request Header Fields Too Large beyond). Go's default is 1 MiB; no API
// client needs more than a few KiB, and forwarding proxies (nginx:
// large_client_header_buffers 4 8k) refuse far less already.
const maxHeaderBytes = 64 << 10

// truncateUTF8 returns s cut to at most max bytes, without splitting a
// UTF-8 encoded character: a cut that would fall inside one drops that
// character whole. Invalid UTF-8 is kept as it is (the bus and the store
// carry bytes): where the bytes before the cut are no valid character
// start, it cuts at max bytes.
func truncateUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	if max <= 0 {
		return ""
	}
	// s[cut] is the first byte left out: step back while it continues a
	// character begun before it (at most UTFMax-1 bytes back).
	cut := max
	for cut > 0 && max-cut < utf8.UTFMax-1 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	if !utf8.RuneStart(s[cut]) {
		return s[:max] // no character start in reach: not UTF-8 here
	}
	return s[:cut]
}

// boundEvent cuts every request-derived string of ev to its limit.
func boundEvent(ev *event.Event) {
	ev.Method = truncateUTF8(ev.Method, MaxEventMethod)
	ev.Host = truncateUTF8(ev.Host, MaxEventHost)
	ev.Route = truncateUTF8(ev.Route, MaxEventRoute)
	ev.UserAgent = truncateUTF8(ev.UserAgent, MaxEventUserAgent)
	ev.ClientIP = truncateUTF8(ev.ClientIP, MaxEventClientIP)
	ev.Project = truncateUTF8(ev.Project, MaxEventIdentity)
	ev.KeyID = truncateUTF8(ev.KeyID, MaxEventIdentity)
}
