// Package verifier decides, for every request, whether its API key may pass,
// and meters the request whatever the decision.
//
// One decision function, Verifier.Verify, serves every front: the reverse
// proxy, the forward-auth endpoint (nginx auth_request, Envoy ext_authz,
// Traefik/Caddy forward auth) and the net/http middleware. It runs from
// memory only: checksum → SHA-256 → table lookup → checks → token bucket,
// without allocating or locking.
//
// # Rate-limit accuracy with several verifiers
//
// Token buckets are local to each verifier process; verifiers do not talk
// to each other on the hot path. With N verifiers behind a load balancer a
// key limited to r/s with burst b can, in the worst case (its traffic spread
// over all N), pass up to N·r/s with bursts up to N·b. With sticky routing
// by key (consistent hashing on the Authorization header) the limit is
// exact. Set per-key limits to r/N when traffic is spread evenly and
// exactness matters, or rely on detection rules (which see every verifier's
// events) to throttle keys that exceed their aggregate rate. Anonymous
// per-IP buckets share a fixed array per route (hashed by IP): two IPs that
// collide share a bucket, so the limit can only be stricter, never looser,
// and memory stays bounded whatever the number of attacking addresses.
//
// # Quotas
//
// The aggregator publishes each key's usage for the current period in the
// key-state log. A verifier adds the requests it allowed since that update,
// so with N verifiers a key can overshoot its quota by at most what the
// other N-1 verifiers allowed since the last published usage.
package verifier
