package main

import "github.com/spf13/cobra"

func init() { registerBench(newBenchQueryCmd) }

// bench query is bench store's query mode with the dataset of the
// aggregator issue: 100M raw events over 30 days for 100,000 keys.
func newBenchQueryCmd(g *globals) *cobra.Command {
	c := newBenchStoreCmd(g)
	c.Use = "query"
	c.Short = "Per-key 30-day usage and filtered log page latencies over a generated history (default 100M events, 30 days, 100k keys)"
	c.Example = `  keymeter bench query                         # 100M rows: builds for ~10 min, then 300 queries of each kind
  keymeter bench query --query-rows 20000000 --keys 10000`
	for name, v := range map[string]string{"query-rows": "100000000", "span": "720h", "keys": "100000", "queries": "300"} {
		if f := c.Flags().Lookup(name); f != nil {
			_ = f.Value.Set(v)
			f.DefValue = v
		}
	}
	return c
}
