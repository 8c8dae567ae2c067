// Package detect loads detection rules (YAML with CEL expressions), runs them
// over the usage event stream in event time, and emits decisions (alert,
// throttle, block_ip, suspend, revoke) to a Sink.
//
// Rules are compiled once at load. Expressions in the subset the engine
// understands natively (comparisons, boolean logic, arithmetic, `in` over
// constant lists, string tests, net24) are also translated into Go closures
// so that the hot path evaluates them without allocating; anything else runs
// through the compiled CEL program with a struct-backed activation.
// Both paths are checked against each other in tests.
package detect
