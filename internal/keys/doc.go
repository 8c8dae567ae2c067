// Package keys is the API key itself and the verifier's memory of all keys.
//
//   - Format (format.go): km_<live|test>_ + 32 base62 characters from
//     crypto/rand + 6 base62 characters of the CRC32 of the rest, so that a
//     mistyped or invented key is refused offline, and secret scanners can
//     recognise a real one. Only the SHA-256 of a secret is ever stored.
//   - Table (table.go, index.go, wire.go): every key's compact Record,
//     found by hash with lock-free reads, loaded from the key-state log
//     (bus.KeyLog) and kept current from it.
//   - Service (service.go): the lifecycle — create, rotate, revoke, suspend,
//     resume, update, delete — each a full KeyState written to the log.
package keys
