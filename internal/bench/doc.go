// Package bench holds keymeter's system benchmarks, the harnesses behind
// `keymeter bench …`: each Run… function takes a Config, does the work
// against real components (bus, store, verifier, detector), prints its
// progress to Config.Progress and one summary line of name=value figures
// to Config.Out. The command only parses flags and opens what the
// benchmark runs on.
package bench
