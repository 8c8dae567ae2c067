package verifier

import (
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Flags are keymeter verifier's flags: the RunConfig, the Settings given as
// text (Settings.RunProcess parses them) and --duration.
type Flags struct {
	Config   RunConfig
	Settings Settings
	Duration time.Duration
}

// Bind defines the verifier's flags on fs, with their defaults; the bus
// flags are the command's.
func (f *Flags) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.Config.Listen, "listen", "127.0.0.1:8080", "address of the reverse proxy (with --upstream) or of the forward-auth endpoint (:8080 for every interface)")
	fs.StringVar(&f.Config.Upstream, "upstream", "", "upstream API URL; empty: --listen serves forward auth only")
	fs.StringVar(&f.Config.AuthListen, "auth-listen", "", "additional forward-auth address while proxying")
	fs.StringVar(&f.Config.AdminListen, "admin-listen", "127.0.0.1:9464", "address of /metrics, /healthz, /readyz (empty to disable)")
	fs.StringVar(&f.Settings.Front, "front", "", "the proxy calling the forward-auth endpoint: "+strings.Join(FrontNames(), ", ")+" (required for forward auth unless the --front-*-header flags name the headers)")
	fs.StringVar(&f.Settings.FrontHeaders[0], "front-method-header", "", "header carrying the original method (replaces the --front's)")
	fs.StringVar(&f.Settings.FrontHeaders[1], "front-uri-header", "", "header carrying the original request URI (replaces the --front's)")
	fs.StringVar(&f.Settings.FrontHeaders[2], "front-host-header", "", "header carrying the original host (replaces the --front's)")
	fs.StringVar(&f.Config.HTTP.ForwardedHeader, "forwarded-header", HeaderXForwardedFor, "header the client address is read from when the peer is a trusted proxy: X-Forwarded-For or Forwarded (RFC 7239)")
	fs.DurationVar(&f.Config.HTTP.BodyTimeout, "body-timeout", DefaultBodyTimeout, "longest an allowed request's body may take to arrive (refusals never read it)")
	fs.DurationVar(&f.Config.HTTP.TunnelCheck, "tunnel-check", DefaultTunnelCheck, "how often the keys of upgraded (WebSocket) connections are checked: a connection whose key was revoked, suspended or expired is closed within this")
	fs.StringVar(&f.Config.DataDir, "data-dir", "data", "where state lives: event spool, embedded NATS store")
	fs.DurationVar(&f.Duration, "duration", 0, "stop cleanly after this long (default: until a signal)")
	fs.StringVar(&f.Config.VerifierID, "verifier-id", "", "this verifier's id in events (default verifier-<hostname>); unique per instance")
	fs.StringArrayVar(&f.Settings.Routes, "route", nil, "route rule PREFIX[,scope=S][,anonymous=RATE[/BURST]][,cost=N]; repeatable; longest prefix wins")
	fs.StringVar(&f.Config.HTTP.QueryParam, "query-param", "", "query parameter that may carry the key, proxy mode only (removed before forwarding; refused with forward auth, which cannot strip it); empty: headers only")
	fs.StringSliceVar(&f.Settings.TrustedProxies, "trusted-proxy", []string{"127.0.0.0/8", "::1/128"}, "CIDRs of the proxies whose --forwarded-header is believed (forward-auth callers, load balancers; never client networks)")
	fs.StringVar(&f.Config.HTTP.CountryHeader, "country-header", "", "CDN header with the client's country, e.g. CF-IPCountry")
	fs.StringVar(&f.Config.HTTP.ASNHeader, "asn-header", "", "header with the client's AS number (\"AS3320\" or \"3320\"), set by a CDN or edge worker")
	fs.Int64Var(&f.Settings.MaxSpoolMB, "max-spool-mb", 1024, "bound of the on-disk event spool; beyond it events are dropped and counted")
	fs.IntVar(&f.Settings.QueueSize, "event-queue", 1<<16, "events waiting to be batched; beyond it events are dropped and counted")
	fs.DurationVar(&f.Config.ShareRateLimits, "share-rate-limits", 0, "make key rate limits global across the verifiers on this bus (NATS: core subject <bus-prefix>.ratelimits; Kafka: topic <bus-prefix>.ratelimits, made on first use), reporting admissions this often (e.g. 50ms; approximate: the overshoot grows with the period plus the bus latency); 0: per-verifier limits")
	fs.BoolVar(&f.Config.Emitter.DurableLog, "durable-log", false, "answer a request only once its event is fsynced in a local log under --data-dir (group commit), replayed after a crash: a SIGKILL or power loss loses no answered request's event (costs throughput; see README)")
	fs.IntVar(&f.Settings.MaxBatch, "max-batch", 1000, "events per batch")
	fs.DurationVar(&f.Settings.FlushInterval, "flush-interval", 50*time.Millisecond, "longest an event waits for its batch")
	fs.StringVar(&f.Settings.GeoCountryDB, "geoip-country-db", "", "MaxMind-format Country or City database (.mmdb) for the events' country")
	fs.StringVar(&f.Settings.GeoASNDB, "geoip-asn-db", "", "MaxMind-format ASN database (.mmdb) for the events' AS number")
	fs.StringVar(&f.Config.QuotaPeriod, "quota-period", "month", "quota period, as the aggregator's: month or day (UTC)")
	fs.IntVar(&f.Config.AnonIPv6Prefix, "anonymous-ipv6-prefix", DefaultAnonIPv6Prefix, "anonymous routes limit IPv6 clients per network of this many bits (32-128): one /64 is one client")
	fs.BoolVar(&f.Config.BlockValidKeys, "block-valid-keys", false, "an address block (block_ip) refuses valid keys too; by default it refuses only requests without a valid, active key, so that one abuser behind a shared NAT does not lock out every key there")
	fs.Int64Var(&f.Settings.MemoryLimitMB, "memory-limit-mb", 0, "soft memory limit for the Go runtime (GOMEMLIMIT); 0: unset")
}
