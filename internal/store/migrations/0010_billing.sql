-- Billing snapshots: the line items of a closed period as first exported,
-- so a later export gives the same bytes and events that arrive late for a
-- closed period are reported, not silently billed.
CREATE TABLE IF NOT EXISTS {db}.billing_snapshots
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
ENGINE = ReplacingMergeTree(closed_at)
ORDER BY (period, project, key_id);
