// Package detect loads detection rules (YAML with CEL expressions), runs them
// over the usage event stream in event time, and emits decisions (alert,
// throttle, block_ip, suspend, revoke) to a Sink.
//
// Rules are compiled once at load (constant folding, optimised programs, a
// static cost ceiling). Expressions in the subset the engine understands
// natively (comparisons, boolean logic, double arithmetic, `in` over
// constant lists, string tests, net24, in_cidr) are also planned as Go
// closures so that the hot path evaluates them without allocating; anything
// else runs through the CEL program with a struct-backed activation. Tests
// check both paths agree.
//
// Window state is kept per group in tables shared by the rules that group
// alike: one flat open-addressing index per table, pointer-free 128-byte
// groups in fixed-size chunks, sub-window counters, small distinct sets held
// inline. An Engine is single-threaded; Parallel splits the rules over
// several engines that all see every event; Detector adds the rule reloader.
// Backtest replays history through the same engine.
package detect
