-- The audit trail: every change made through the API (keys, billing
-- closes, leak reports), with who made it (the admin token's label, never
-- the token) and when. Rows are written once and never changed.
CREATE TABLE IF NOT EXISTS {db}.audit
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
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, id);
