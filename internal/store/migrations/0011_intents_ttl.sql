-- Ingest intents are needed only until their insert is acknowledged (and a
-- little longer, as the floor of positions already stored): keep 30 days.
-- A pending row is always older than the done row that replaces it, so it
-- expires first and never resurfaces alone.
ALTER TABLE {db}.ingest_intents MODIFY TTL toDateTime(updated) + INTERVAL 30 DAY;
