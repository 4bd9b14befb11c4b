-- ingest_batches keeps a week of batches, and of older ones only the newest of each partition:
-- the resume query (ClickHouseSink.resume_points) reads a partition's rows, so without a TTL it
-- scanned the partition's whole history, growing with every batch.
--
-- The newest batch of a partition is its resume point and must outlive any TTL: without it the
-- sink would read the partition from its start again. So expired rows are not deleted but rolled
-- up, per (topic, partition), the ORDER BY prefix, into one row that is the newest of them: its
-- first_offset, last_offset, rows, written and consumer_group, and the latest recorded_at. Its key
-- is that of one of the rolled-up rows, the last of them in the ORDER BY, so parts stay sorted.
-- The rows of a batch's two records (written false, then true) are one row in any part (the
-- ReplacingMergeTree merge comes before the TTL), so argMax by last_offset has no tie to break;
-- where they sit in two parts, each part's roll-up keeps the batch's key and the resume query's
-- max(written) sees both.
--
-- The aggregate functions take plain columns: ClickHouse 26.9 fails the TTL's materialization
-- (NOT_FOUND_COLUMN_IN_BLOCK) when an argument is an expression such as (last_offset, written).

ALTER TABLE {db}.ingest_batches MODIFY TTL recorded_at + INTERVAL 7 DAY
GROUP BY topic, partition
SET
    first_offset   = argMax(first_offset, last_offset),
    last_offset    = max(last_offset),
    rows           = argMax(rows, last_offset),
    written        = argMax(written, last_offset),
    consumer_group = argMax(consumer_group, last_offset),
    recorded_at    = max(recorded_at);
