-- Batch boundaries of the ClickHouse sink, the record it resumes from (see
-- connectors.clickhouse.sink). Each batch is recorded twice: with written = false before its
-- insert, with written = true once the insert returned. The newest batch of a partition that is
-- not marked written may or may not be in the event table, so the sink replays it; a written
-- one is not replayed, which matters once its block has left the deduplication window.
-- ReplacingMergeTree keeps one row per batch after merges (the written one); queries must not
-- rely on merges having happened, so they aggregate with max(written).

CREATE TABLE IF NOT EXISTS {db}.ingest_batches
(
    topic           String,
    partition       Int32,
    first_offset    Int64,
    last_offset     Int64,
    rows            UInt32,
    written         Bool,
    consumer_group  LowCardinality(String),
    recorded_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(written)
ORDER BY (topic, partition, first_offset, last_offset);
