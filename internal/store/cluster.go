package store

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// shardKeys are the tables sharded over a cluster, with the expression
// that places a row: one key's raw events and rollups live on one shard.
// Every other table of the migrations is small state, replicated in full
// to every node.
var shardKeys = map[string]string{
	"requests":     "cityHash64(key_id)",
	"requests_1m":  "cityHash64(key_id)",
	"requests_1d":  "cityHash64(key_id)",
	"rollup_input": "cityHash64(key_id)",
}

var (
	createTableRe = regexp.MustCompile(`(?s)^CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)\s*\n(.*?\n)ENGINE = (\w+)(?:\(([^)\n]*)\))?(.*)$`)
	createViewRe  = regexp.MustCompile(`(?s)^CREATE MATERIALIZED VIEW IF NOT EXISTS \{db\}\.(\w+) (TO .*)$`)
	alterTableRe  = regexp.MustCompile(`(?s)^ALTER TABLE \{db\}\.(\w+) (.*)$`)
	tableRefRe    = regexp.MustCompile(`\{db\}\.(\w+)`)
)

// ClusterSQL turns the single-node migrations into the schema of a
// ClickHouse cluster, to apply once with clickhouse-client: tables in
// shardKeys become a Replicated*MergeTree table NAME_local on every node
// and a Distributed table NAME over them; other tables become one
// Replicated*MergeTree table replicated to every node; views run on each
// shard over the local tables; ALTERs go to the local tables. Every
// statement carries ON CLUSTER. The migrations are recorded in
// schema_migrations, so `keymeter migrate up` finds nothing to do.
//
// cluster is the cluster's name, or the macro '{cluster}'; the {shard}
// and {replica} macros come from each server's config. A statement of a
// kind it does not know is an error, so that a new migration cannot be
// left out silently.
func ClusterSQL(migs []Migration, cluster, database string) (string, error) {
	if cluster == "" || strings.ContainsAny(cluster, "'\\") {
		return "", fmt.Errorf("cluster %q: give a cluster name without quotes", cluster)
	}
	if database == "" {
		database = "keymeter"
	}
	if !regexp.MustCompile(`^\w+$`).MatchString(database) {
		return "", fmt.Errorf("database %q: letters, digits and _ only", database)
	}
	on := "ON CLUSTER '" + cluster + "'"
	var b strings.Builder
	first := migs[0].Version
	last := migs[len(migs)-1].Version
	fmt.Fprintf(&b, `-- keymeter schema for a ClickHouse cluster (23.8+), generated from the
-- migrations %04d-%04d of internal/store/migrations by
--   keymeter migrate --print --cluster '%s'   (make cluster-sql)
-- Do not edit: change the migrations and regenerate.
--
-- Sharded tables, ReplicatedMergeTree tables named *_local on every node
-- with Distributed tables under the names the store uses, sharded by key
-- so that one key's rows and rollups live on one shard:
--   %s.
-- The other tables are small and replicated in full to every node.
-- The migrations are recorded in schema_migrations, so
-- `+"`keymeter migrate status`"+` shows them applied.
--
-- Apply once, from any node:
--   clickhouse-client --multiquery < deploy/clickhouse/cluster.sql
-- The macros {cluster}, {shard} and {replica} come from each server's
-- config (see config.d/macros.xml). The keymeter user needs the profile in
-- users.d/keymeter.xml: inserts through a Distributed table must be
-- synchronous (distributed_foreground_insert = 1) for exactly-once, so the
-- insert succeeds only once every shard has its part, and each shard's
-- replicated table deduplicates a replay by its insert_deduplication_token.

CREATE DATABASE IF NOT EXISTS %s %s;
`, first, last, cluster, strings.Join(slices.Sorted(maps.Keys(shardKeys)), ", "), database, on)
	refs := func(s string) string {
		s = tableRefRe.ReplaceAllStringFunc(s, func(m string) string { return "{db}." + clusterLocal(m[len("{db}."):]) })
		return strings.ReplaceAll(s, "{db}", database)
	}
	for _, m := range migs {
		fmt.Fprintf(&b, "\n-- %04d_%s\n", m.Version, m.Name)
		for i, st := range m.Statements {
			out, err := clusterStatement(st, on, cluster, database, refs)
			if err != nil {
				return "", fmt.Errorf("migration %04d_%s: statement %d: %w", m.Version, m.Name, i+1, err)
			}
			for _, o := range out {
				b.WriteString("\n" + o + ";\n")
			}
		}
	}
	smig, err := clusterStatement(schemaMigrationsDDL, on, cluster, database, refs)
	if err != nil {
		return "", err
	}
	b.WriteString("\n-- the record of what is applied\n\n" + smig[0] + ";\n\n")
	fmt.Fprintf(&b, "INSERT INTO %s.schema_migrations (version, name, applied) VALUES\n   ", database)
	for i, m := range migs {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, " (%d, '%s', now64(3))", m.Version, m.Name)
	}
	b.WriteString(";\n")
	return b.String(), nil
}

// clusterLocal is the name of the table that holds a table's rows on a node.
func clusterLocal(name string) string {
	if _, ok := shardKeys[name]; ok {
		return name + "_local"
	}
	return name
}

// clusterStatement is one migration statement on a cluster: one statement,
// or two for a sharded table (local and Distributed).
func clusterStatement(st, on, cluster, database string, refs func(string) string) ([]string, error) {
	st = strings.TrimSpace(st)
	if m := createTableRe.FindStringSubmatch(st); m != nil {
		name, cols, engine, args, rest := m[1], m[2], m[3], m[4], m[5]
		key, sharded := shardKeys[name]
		path, replica := "/clickhouse/tables/all/"+database+"/"+name, "{shard}-{replica}"
		if sharded {
			path, replica = "/clickhouse/tables/{shard}/"+database+"/"+name, "{replica}"
		}
		switch {
		case engine == "Null":
			if !sharded {
				return nil, fmt.Errorf("table %s: a Null table must be sharded (in shardKeys): it feeds local views", name)
			}
		case strings.HasSuffix(engine, "MergeTree") && !strings.HasPrefix(engine, "Replicated"):
			a := "'" + path + "', '" + replica + "'"
			if args != "" {
				a += ", " + args
			}
			engine, args = "Replicated"+engine, a
		default:
			return nil, fmt.Errorf("table %s: engine %s has no cluster form here (MergeTree family or Null)", name, engine)
		}
		// The non-replicated window's replicated twin.
		rest = strings.ReplaceAll(rest, "non_replicated_deduplication_window", "replicated_deduplication_window")
		eng := "ENGINE = " + engine
		if args != "" {
			eng += "(" + args + ")"
		}
		out := []string{fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s %s\n%s%s%s", database, clusterLocal(name), on, cols, eng, rest)}
		if sharded {
			out = append(out, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %[1]s.%[2]s %[3]s AS %[1]s.%[2]s_local\nENGINE = Distributed('%[4]s', %[1]s, %[2]s_local, %[5]s)",
				database, name, on, cluster, key))
		}
		return out, nil
	}
	if m := createViewRe.FindStringSubmatch(st); m != nil {
		// Views run on each shard, over the local tables.
		return []string{fmt.Sprintf("CREATE MATERIALIZED VIEW IF NOT EXISTS %s.%s %s %s", database, m[1], on, refs(m[2]))}, nil
	}
	if m := alterTableRe.FindStringSubmatch(st); m != nil {
		name, what := m[1], refs(m[2])
		out := []string{fmt.Sprintf("ALTER TABLE %s.%s %s %s", database, clusterLocal(name), on, what)}
		if _, sharded := shardKeys[name]; sharded && strings.Contains(strings.ToUpper(what), "COLUMN") {
			// A Distributed table's columns follow its local table's.
			out = append(out, fmt.Sprintf("ALTER TABLE %s.%s %s %s", database, name, on, what))
		}
		return out, nil
	}
	first, _, _ := strings.Cut(st, "\n")
	return nil, fmt.Errorf("%q: not a statement the cluster schema knows (CREATE TABLE IF NOT EXISTS, CREATE MATERIALIZED VIEW IF NOT EXISTS, ALTER TABLE)", first)
}

// MigrationsSQL is the single-node schema the migrations create, as one
// SQL script, for review or to apply by hand.
func MigrationsSQL(migs []Migration, database string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE DATABASE IF NOT EXISTS %s;\n", database)
	for _, m := range migs {
		fmt.Fprintf(&b, "\n-- %04d_%s\n", m.Version, m.Name)
		for _, st := range m.Statements {
			b.WriteString("\n" + strings.ReplaceAll(st, "{db}", database) + ";\n")
		}
	}
	return b.String()
}
