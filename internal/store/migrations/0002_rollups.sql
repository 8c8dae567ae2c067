-- Per-minute rollup: requests by outcome, route and country, with bytes,
-- cost, and unique client IPs / countries as aggregate states.
CREATE TABLE IF NOT EXISTS {db}.requests_1m
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
    uniq_ips       AggregateFunction(uniq, String),
    uniq_countries AggregateFunction(uniq, String),
    INDEX key_idx key_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (project, key_id, minute, outcome, route, country)
TTL minute + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 10000;

-- Per-day rollup, fed from the per-minute one (few rows per insert).
CREATE TABLE IF NOT EXISTS {db}.requests_1d
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
    uniq_ips       AggregateFunction(uniq, String),
    uniq_countries AggregateFunction(uniq, String),
    INDEX key_idx key_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (project, key_id, day, outcome, route, country)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.requests_1d_mv TO {db}.requests_1d AS
SELECT toDate(minute) AS day, project, key_id, outcome, route, country,
       sum(requests) AS requests, sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out,
       sum(cost_units) AS cost_units,
       uniqMergeState(uniq_ips) AS uniq_ips, uniqMergeState(uniq_countries) AS uniq_countries
FROM {db}.requests_1m
GROUP BY day, project, key_id, outcome, route, country;

-- The store pre-aggregates each inserted batch per minute (with the batch's
-- distinct client IPs per bucket) and inserts it here; the view turns the IP
-- lists into aggregate states. Pre-aggregating beat a view over raw rows by
-- far (see README: bench store --rollups views|preaggregated).
CREATE TABLE IF NOT EXISTS {db}.rollup_input
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
    ips        Array(String)
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rollup_input_mv TO {db}.requests_1m AS
SELECT minute, project, key_id, outcome, route, country,
       sum(requests) AS requests, sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out,
       sum(cost_units) AS cost_units,
       uniqArrayState(ips) AS uniq_ips, uniqState(country) AS uniq_countries
FROM {db}.rollup_input
GROUP BY minute, project, key_id, outcome, route, country;
