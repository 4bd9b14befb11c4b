-- The TTL of every table on its DateTime64 time itself, not on toDateTime(…) of it.
--
-- DateTime holds seconds since 1970 in a UInt32, so toDateTime wraps outside 1970…2106-02-07:
-- an event of 2200 had a TTL base in 2063, one of 2140 a base in 2003 (dropped at the next merge,
-- though it lies in the future), one of 1900 a base in 2036 (kept long after its retention).
-- DateTime64 + INTERVAL covers 1900…2299 without wrapping. The rollups' minute is a DateTime: its
-- sum with the interval wrapped past 2106 (to 1970, so dropped at once), hence the DateTime64 of it.
--
-- The TTL is set anew with EZ_CLICKHOUSE_TTL_DAYS as it is when this migration is applied. ClickHouse
-- recomputes the TTL of the existing parts in the background (materialize_ttl_after_modify).

ALTER TABLE {db}.task_events MODIFY TTL event_time + INTERVAL {ttl_days} DAY;
ALTER TABLE {db}.llm_calls MODIFY TTL event_time + INTERVAL {ttl_days} DAY;
ALTER TABLE {db}.telemetry MODIFY TTL event_time + INTERVAL {ttl_days} DAY;
ALTER TABLE {db}.alerts MODIFY TTL event_time + INTERVAL {ttl_days} DAY;
ALTER TABLE {db}.llm_windows MODIFY TTL event_time + INTERVAL {ttl_days} DAY;
ALTER TABLE {db}.inference_results MODIFY TTL event_time + INTERVAL {ttl_days} DAY;
ALTER TABLE {db}.inference_vectors MODIFY TTL event_time + INTERVAL {ttl_days} DAY;
ALTER TABLE {db}.task_state_agg MODIFY TTL last_event_at + INTERVAL {ttl_days} DAY;
ALTER TABLE {db}.llm_calls_1m MODIFY TTL toDateTime64(minute, 0, 'UTC') + INTERVAL {ttl_days} DAY;
ALTER TABLE {db}.task_events_1m MODIFY TTL toDateTime64(minute, 0, 'UTC') + INTERVAL {ttl_days} DAY;
