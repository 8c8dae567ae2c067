// Package chdb is the embedded store backend: the ClickHouse engine of chDB
// (libchdb.so) loaded in-process with purego, lazily, so that a binary that
// links it but never opens a chDB store runs without the library.
//
// Values always travel apart from SQL (chdb_query_with_params_n); bulk
// inserts go through a temporary file in Native or RowBinary format
// (INSERT … FROM INFILE), because inline data after FORMAT is cut at the
// first blank line.
// chDB allows one data directory per process and one process per directory.
package chdb
