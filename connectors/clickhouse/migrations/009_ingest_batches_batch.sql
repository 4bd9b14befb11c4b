-- A batch of the ClickHouse sink spans the partitions of one topic (one insert per table and
-- flush): each range row names the batch it belongs to, its insert_deduplication_token
-- (connectors.sink.batch_token, which lists every range of the batch), so a worker resuming any
-- one partition of an unwritten batch can rebuild the whole of it under the same token. Rows
-- recorded before this migration hold '' (a batch of that one range).
--
-- The TTL roll-up of 008 keeps the batch of the newest range of each partition with it.

ALTER TABLE {db}.ingest_batches ADD COLUMN IF NOT EXISTS batch String DEFAULT '' AFTER consumer_group;

ALTER TABLE {db}.ingest_batches MODIFY TTL recorded_at + INTERVAL 7 DAY
GROUP BY topic, partition
SET
    first_offset   = argMax(first_offset, last_offset),
    last_offset    = max(last_offset),
    rows           = argMax(rows, last_offset),
    written        = argMax(written, last_offset),
    consumer_group = argMax(consumer_group, last_offset),
    batch          = argMax(batch, last_offset),
    recorded_at    = max(recorded_at);
