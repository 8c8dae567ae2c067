-- Exactly-once ingest: a consumer records the bus range it is about to insert
-- and the token; after a crash it replays pending intents with that token.
CREATE TABLE IF NOT EXISTS {db}.ingest_intents
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
ENGINE = ReplacingMergeTree(version)
ORDER BY (consumer, partition, token);

CREATE TABLE IF NOT EXISTS {db}.decisions
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
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, id);

CREATE TABLE IF NOT EXISTS {db}.keys
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
ENGINE = ReplacingMergeTree(version)
ORDER BY id;
