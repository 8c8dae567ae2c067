// Package detect is the detection engine, a library: it loads detection
// rules (YAML with CEL expressions), runs them over the usage event stream
// in event time, and emits decisions (alert, throttle, block_ip, suspend,
// revoke) to a Sink. The running role that feeds it from the bus and
// carries decisions out is internal/detector (detector.Run); backtests
// (`keymeter rules backtest`) replay history through the same Engine.
//
// Each key, and each client network for traffic without a key, has a
// profile learned online from the events themselves (profile.go): spread
// per 10 minutes as robust quantiles, volume by hour of week and of day,
// the countries, ASNs and networks seen with first/last-seen times. Rules
// read it as `profile.*`, so a key is judged against its own normal, in a
// backtest that starts from nothing as in the live detector (which
// warm-starts it from stored history).
//
// The response (respond.go) is graduated and corroborated: suspend and
// revoke wait for another rule's signal on the key (or a leak report or a
// person: Engine.Corroborate) unless the rule says otherwise; each action
// is suppressed per (group, action); a circuit breaker counts the distinct
// keys suspended or revoked per rule and across rules over a rolling
// window and re-arms by itself.
//
// Rules are compiled once at load (constant folding, optimised programs, a
// static cost ceiling). Expressions in the subset the engine understands
// natively (comparisons, boolean logic, double arithmetic, `in` over
// constant lists, string tests, net24, in_cidr, profile fields and
// functions) are also planned as Go closures so that the hot path
// evaluates them without allocating; anything else runs through the CEL
// program with a struct-backed activation. Tests check both paths agree.
//
// Window state is kept per group in tables shared by the rules that group
// alike: one flat open-addressing index per table, pointer-free 128-byte
// groups in fixed-size chunks, sub-window counters, small distinct sets held
// inline. An Engine is single-threaded; Parallel splits the rules over
// several engines that all see every event (they share corroboration and
// the global breaker).
package detect
