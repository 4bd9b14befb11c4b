-- The current state of every task, kept up to date from task_events by a materialized view.
--
-- task_state_agg holds one row of aggregate states per (tenant_id, task_id) and insert; the
-- rows of one task are combined by background merges, which may not have happened yet, so it is
-- read through the view task_state, which merges them in its GROUP BY (read task_state, not the
-- table). See docs/task-analytics.md for what each column of task_state means.
--
-- "Latest" is decided by the event's (event_time, attempt, step) with the step ranked queued <
-- started < any other status: events are not stored in the order they happened (one task may
-- hop between agents, hence partitions), and a retry queued in the very millisecond its previous
-- attempt failed must still count as the newer event. argMax skips NULL values, so the last
-- quality score is the last one reported, not the NULL of a later event. The states hold plain
-- strings (toString) whatever the source columns' LowCardinality, so their type is stable.
--
-- cost_usd of a task event is the cost of its attempt so far (0 when queued or started), so the
-- cost of a task is the sum over its terminal events, one per attempt.
--
-- As for the rollups (002), the target table keeps a deduplication window: a retried insert
-- into task_events runs this view again, and only the window makes the table drop the block.
-- Rows leave with the TTL once the task has been idle for the retention of the event tables.

CREATE TABLE IF NOT EXISTS {db}.task_state_agg
(
    tenant_id          LowCardinality(String),
    task_id            String,
    last_status        AggregateFunction(argMax, String, Tuple(DateTime64(3, 'UTC'), Int32, UInt8)),
    last_queue         AggregateFunction(argMax, String, Tuple(DateTime64(3, 'UTC'), Int32, UInt8)),
    last_agent_id      AggregateFunction(argMax, String, Tuple(DateTime64(3, 'UTC'), Int32, UInt8)),
    last_agent_type    AggregateFunction(argMax, String, Tuple(DateTime64(3, 'UTC'), Int32, UInt8)),
    last_quality_score AggregateFunction(argMax, Nullable(Float64), Tuple(DateTime64(3, 'UTC'), Int32, UInt8)),
    first_queued_at    SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    last_queued_at     SimpleAggregateFunction(max, Nullable(DateTime64(3, 'UTC'))),
    last_started_at    SimpleAggregateFunction(max, Nullable(DateTime64(3, 'UTC'))),
    last_finished_at   SimpleAggregateFunction(max, Nullable(DateTime64(3, 'UTC'))),
    last_event_at      SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    max_attempt        SimpleAggregateFunction(max, Int32),
    cost_usd_sum       SimpleAggregateFunction(sum, Float64)
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant_id, task_id)
TTL toDateTime(last_event_at) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.task_state_mv TO {db}.task_state_agg AS
WITH
    (event_time, attempt, toUInt8(multiIf(status = 'queued', 0, status = 'started', 1, 2))) AS step,
    status IN ('completed', 'failed', 'cancelled')                                          AS terminal
SELECT
    tenant_id,
    task_id,
    argMaxState(toString(status), step)                AS last_status,
    argMaxState(toString(queue), step)                 AS last_queue,
    argMaxState(toString(agent_id), step)              AS last_agent_id,
    argMaxState(toString(agent_type), step)            AS last_agent_type,
    argMaxState(quality_score, step)                   AS last_quality_score,
    min(if(status = 'queued', event_time, NULL))       AS first_queued_at,
    max(if(status = 'queued', event_time, NULL))       AS last_queued_at,
    max(if(status = 'started', event_time, NULL))      AS last_started_at,
    max(if(terminal, event_time, NULL))                AS last_finished_at,
    max(event_time)                                    AS last_event_at,
    max(attempt)                                       AS max_attempt,
    sumIf(cost_usd, terminal)                          AS cost_usd_sum
FROM {db}.task_events
GROUP BY tenant_id, task_id;

-- Timings describe the latest attempt: its wait runs from its queued event to its started
-- event, its run from there to its terminal event. Either is NULL while it is not over, and both
-- are while an attempt queued again after the task last started waits for its start.
CREATE VIEW IF NOT EXISTS {db}.task_state AS
SELECT
    tenant_id,
    task_id,
    status,
    queue,
    agent_id,
    agent_type,
    attempts,
    queued_at,
    requeued_at                                                               AS last_queued_at,
    started_at,
    if(status IN ('completed', 'failed', 'cancelled'), ended_at, NULL)        AS finished_at,
    seen_at                                                                   AS last_event_at,
    if(attempt_started, dateDiff('millisecond', requeued_at, started_at), NULL) AS queue_wait_ms,
    if(attempt_started, dateDiff('millisecond', started_at, finished_at), NULL) AS run_ms,
    cost_usd,
    quality_score
FROM
(
    SELECT
        tenant_id,
        task_id,
        argMaxMerge(last_status)                     AS status,
        argMaxMerge(last_queue)                      AS queue,
        argMaxMerge(last_agent_id)                   AS agent_id,
        argMaxMerge(last_agent_type)                 AS agent_type,
        max(max_attempt)                             AS attempts,
        min(first_queued_at)                         AS queued_at,
        max(last_queued_at)                          AS requeued_at,
        max(last_started_at)                         AS started_at,
        max(last_finished_at)                        AS ended_at,
        max(last_event_at)                           AS seen_at,
        sum(cost_usd_sum)                            AS cost_usd,
        argMaxMerge(last_quality_score)              AS quality_score,
        started_at IS NOT NULL AND (requeued_at IS NULL OR started_at >= requeued_at) AS attempt_started
    FROM {db}.task_state_agg
    GROUP BY tenant_id, task_id
);
