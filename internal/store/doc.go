// Package store keeps usage events, rollups, ingest intents, decisions and a
// mirror of the key table in ClickHouse. Store is the interface consumers
// use; DB implements it once in ClickHouse SQL over a backend Conn:
// store/chdb (the engine embedded in-process) or store/clickhouse (a server
// or cluster through clickhouse-go). store/storetest is the conformance
// suite both run. See README.md for the schema, exactly-once design and
// measured figures.
package store
