-- keymeter schema for a ClickHouse cluster (23.8+), generated from the
-- migrations 0001-0020 of internal/store/migrations by
--   keymeter migrate --print --cluster '{cluster}'   (make cluster-sql)
-- Do not edit: change the migrations and regenerate.
--
-- Sharded tables, ReplicatedMergeTree tables named *_local on every node
-- with Distributed tables under the names the store uses, sharded by key
-- so that one key's rows and rollups live on one shard:
--   requests, requests_1d, requests_1m, rollup_input.
-- The other tables are small and replicated in full to every node.
-- The migrations are recorded in schema_migrations, so
-- `keymeter migrate status` shows them applied.
--
-- Apply once, from any node:
--   clickhouse-client --multiquery < deploy/clickhouse/cluster.sql
-- The macros {cluster}, {shard} and {replica} come from each server's
-- config (see config.d/macros.xml). The keymeter user needs the profile in
-- users.d/keymeter.xml: inserts through a Distributed table must be
-- synchronous (distributed_foreground_insert = 1) for exactly-once, so the
-- insert succeeds only once every shard has its part, and each shard's
-- replicated table deduplicates a replay by its insert_deduplication_token.

CREATE DATABASE IF NOT EXISTS keymeter ON CLUSTER '{cluster}';

-- 0001_requests

CREATE TABLE IF NOT EXISTS keymeter.requests_local ON CLUSTER '{cluster}'
(
    time        DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    project     String,
    key_id      String,
    event_id    String CODEC(ZSTD(1)),
    outcome     String,
    client_ip   String CODEC(ZSTD(1)),
    country     String,
    asn         UInt32,
    method      String,
    host        String,
    route       String,
    status      UInt16,
    latency_us  UInt32,
    bytes_in    UInt64,
    bytes_out   UInt64,
    user_agent  String CODEC(ZSTD(1)),
    verifier_id String,
    cost_units  UInt32,
    INDEX client_ip_idx client_ip TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX status_idx status TYPE minmax GRANULARITY 4
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/keymeter/requests', '{replica}')
PARTITION BY toDate(time)
ORDER BY (project, key_id, time)
TTL toDateTime(time) + INTERVAL 90 DAY
SETTINGS replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS keymeter.requests ON CLUSTER '{cluster}' AS keymeter.requests_local
ENGINE = Distributed('{cluster}', keymeter, requests_local, cityHash64(key_id));

-- 0002_rollups

CREATE TABLE IF NOT EXISTS keymeter.requests_1m_local ON CLUSTER '{cluster}'
(
    minute         DateTime('UTC'),
    project        LowCardinality(String),
    key_id         String,
    outcome        LowCardinality(String),
    route          LowCardinality(String),
    country        LowCardinality(String),
    requests       SimpleAggregateFunction(sum, UInt64),
    bytes_in       SimpleAggregateFunction(sum, UInt64),
    bytes_out      SimpleAggregateFunction(sum, UInt64),
    cost_units     SimpleAggregateFunction(sum, UInt64),
    uniq_ips       AggregateFunction(uniq, UInt64), -- of xxHash64(client_ip)
    uniq_countries AggregateFunction(uniq, String),
    INDEX key_idx key_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/keymeter/requests_1m', '{replica}')
PARTITION BY toYYYYMM(minute)
ORDER BY (project, key_id, minute, outcome, route, country)
TTL minute + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS keymeter.requests_1m ON CLUSTER '{cluster}' AS keymeter.requests_1m_local
ENGINE = Distributed('{cluster}', keymeter, requests_1m_local, cityHash64(key_id));

CREATE TABLE IF NOT EXISTS keymeter.requests_1d_local ON CLUSTER '{cluster}'
(
    day            Date,
    project        LowCardinality(String),
    key_id         String,
    outcome        LowCardinality(String),
    route          LowCardinality(String),
    country        LowCardinality(String),
    requests       SimpleAggregateFunction(sum, UInt64),
    bytes_in       SimpleAggregateFunction(sum, UInt64),
    bytes_out      SimpleAggregateFunction(sum, UInt64),
    cost_units     SimpleAggregateFunction(sum, UInt64),
    uniq_ips       AggregateFunction(uniq, UInt64), -- of xxHash64(client_ip)
    uniq_countries AggregateFunction(uniq, String),
    INDEX key_idx key_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/keymeter/requests_1d', '{replica}')
PARTITION BY toYYYYMM(day)
ORDER BY (project, key_id, day, outcome, route, country)
SETTINGS replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS keymeter.requests_1d ON CLUSTER '{cluster}' AS keymeter.requests_1d_local
ENGINE = Distributed('{cluster}', keymeter, requests_1d_local, cityHash64(key_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS keymeter.requests_1d_mv ON CLUSTER '{cluster}' TO keymeter.requests_1d_local AS
SELECT toDate(minute) AS day, project, key_id, outcome, route, country,
       sum(requests) AS requests, sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out,
       sum(cost_units) AS cost_units,
       uniqMergeState(uniq_ips) AS uniq_ips, uniqMergeState(uniq_countries) AS uniq_countries
FROM keymeter.requests_1m_local
GROUP BY day, project, key_id, outcome, route, country;

CREATE TABLE IF NOT EXISTS keymeter.rollup_input_local ON CLUSTER '{cluster}'
(
    minute     DateTime('UTC'),
    project    String,
    key_id     String,
    outcome    String,
    route      String,
    country    String,
    requests   UInt64,
    bytes_in   UInt64,
    bytes_out  UInt64,
    cost_units UInt64,
    ip_hashes  Array(UInt64)
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS keymeter.rollup_input ON CLUSTER '{cluster}' AS keymeter.rollup_input_local
ENGINE = Distributed('{cluster}', keymeter, rollup_input_local, cityHash64(key_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS keymeter.rollup_input_mv ON CLUSTER '{cluster}' TO keymeter.requests_1m_local AS
SELECT minute, project, key_id, outcome, route, country, requests, bytes_in, bytes_out, cost_units,
       arrayReduce('uniqState', ip_hashes) AS uniq_ips, arrayReduce('uniqState', [country]) AS uniq_countries
FROM keymeter.rollup_input_local;

-- 0003_state

CREATE TABLE IF NOT EXISTS keymeter.ingest_intents ON CLUSTER '{cluster}'
(
    consumer  String,
    partition String,
    first_pos UInt64,
    last_pos  UInt64,
    token     String,
    state     LowCardinality(String),
    updated   DateTime64(3, 'UTC'),
    version   UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/keymeter/ingest_intents', '{shard}-{replica}', version)
ORDER BY (consumer, partition, token);

CREATE TABLE IF NOT EXISTS keymeter.decisions ON CLUSTER '{cluster}'
(
    id           String,
    time         DateTime64(3, 'UTC'),
    rule_id      LowCardinality(String),
    rule_version UInt32,
    mode         LowCardinality(String),
    action       LowCardinality(String),
    project      LowCardinality(String),
    key_id       String,
    client_ip    String,
    group_key    String,
    reason       String,
    evidence     String CODEC(ZSTD(3))
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/keymeter/decisions', '{shard}-{replica}')
PARTITION BY toYYYYMM(time)
ORDER BY (time, id);

CREATE TABLE IF NOT EXISTS keymeter.keys ON CLUSTER '{cluster}'
(
    id            String,
    project       LowCardinality(String),
    name          String,
    owner         String,
    env           LowCardinality(String),
    display       String,
    state         LowCardinality(String),
    created       DateTime64(3, 'UTC'),
    expires       DateTime64(3, 'UTC'),
    revoked       DateTime64(3, 'UTC'),
    revoke_reason String,
    scopes        Array(String),
    allowed_cidrs Array(String),
    rate_limit    UInt32,
    monthly_quota UInt64,
    replaces      String,
    metadata      String,
    version       UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/keymeter/keys', '{shard}-{replica}', version)
ORDER BY id;

-- 0010_billing

CREATE TABLE IF NOT EXISTS keymeter.billing_snapshots ON CLUSTER '{cluster}'
(
    period     String,
    project    String,
    key_id     String,
    requests   UInt64,
    bytes_in   UInt64,
    bytes_out  UInt64,
    cost_units UInt64,
    closed_at  DateTime
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/keymeter/billing_snapshots', '{shard}-{replica}', closed_at)
ORDER BY (period, project, key_id);

-- 0011_intents_ttl

ALTER TABLE keymeter.ingest_intents ON CLUSTER '{cluster}' MODIFY TTL toDateTime(updated) + INTERVAL 30 DAY;

-- 0020_audit

CREATE TABLE IF NOT EXISTS keymeter.audit ON CLUSTER '{cluster}'
(
    id      String,
    time    DateTime64(3, 'UTC'),
    actor   String,
    role    LowCardinality(String),
    action  LowCardinality(String),
    target  String,
    project LowCardinality(String),
    detail  String CODEC(ZSTD(3))
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/keymeter/audit', '{shard}-{replica}')
PARTITION BY toYYYYMM(time)
ORDER BY (time, id);

-- the record of what is applied

CREATE TABLE IF NOT EXISTS keymeter.schema_migrations ON CLUSTER '{cluster}'
(
    version UInt32,
    name    String,
    applied DateTime64(3, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/keymeter/schema_migrations', '{shard}-{replica}')
ORDER BY version;

INSERT INTO keymeter.schema_migrations (version, name, applied) VALUES
    (1, 'requests', now64(3)), (2, 'rollups', now64(3)), (3, 'state', now64(3)), (10, 'billing', now64(3)), (11, 'intents_ttl', now64(3)), (20, 'audit', now64(3));
