-- Per-minute rollups, filled by materialized views on every insert into the event tables.
--
-- Columns hold aggregate states: read them with the -Merge form of the function, e.g.
--   SELECT provider, model, countMerge(calls), sumMerge(cost_usd_sum),
--          quantilesMerge(0.5, 0.95, 0.99)(latency_ms_quantiles)
--   FROM llm_calls_1m WHERE minute >= now() - INTERVAL 1 HOUR GROUP BY provider, model
-- State columns are named apart from the source columns: inside the view's SELECT an alias
-- equal to a source column would shadow it for the expressions that follow.
--
-- The rollup tables keep a deduplication window too: on a retried insert ClickHouse still runs
-- the views and leaves each target table to drop the block it already has, so without the
-- window the rollups would count a retried batch twice.

CREATE TABLE IF NOT EXISTS {db}.llm_calls_1m
(
    minute                DateTime('UTC'),
    tenant_id             LowCardinality(String),
    agent_id              LowCardinality(String),
    provider              LowCardinality(String),
    model                 LowCardinality(String),
    calls                 AggregateFunction(count),
    errors                AggregateFunction(sum, UInt64),
    input_tokens_sum      AggregateFunction(sum, Int64),
    output_tokens_sum     AggregateFunction(sum, Int64),
    cost_usd_sum          AggregateFunction(sum, Float64),
    latency_ms_quantiles  AggregateFunction(quantiles(0.5, 0.95, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, tenant_id, agent_id, provider, model)
TTL minute + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.llm_calls_1m_mv TO {db}.llm_calls_1m AS
SELECT
    toStartOfMinute(event_time)                        AS minute,
    tenant_id,
    agent_id,
    provider,
    model,
    countState()                                       AS calls,
    sumState(toUInt64(status != 'ok'))                 AS errors,
    sumState(toInt64(input_tokens))                    AS input_tokens_sum,
    sumState(toInt64(output_tokens))                   AS output_tokens_sum,
    sumState(cost_usd)                                 AS cost_usd_sum,
    quantilesState(0.5, 0.95, 0.99)(latency_ms)        AS latency_ms_quantiles
FROM {db}.llm_calls
GROUP BY minute, tenant_id, agent_id, provider, model;

CREATE TABLE IF NOT EXISTS {db}.task_events_1m
(
    minute                   DateTime('UTC'),
    tenant_id                LowCardinality(String),
    agent_id                 LowCardinality(String),
    queue                    LowCardinality(String),
    status                   LowCardinality(String),
    events                   AggregateFunction(count),
    cost_usd_sum             AggregateFunction(sum, Float64),
    duration_ms_sum          AggregateFunction(sum, Nullable(Int64)),
    duration_ms_quantiles    AggregateFunction(quantiles(0.5, 0.95, 0.99), Nullable(Int64)),
    queue_wait_ms_quantiles  AggregateFunction(quantiles(0.5, 0.95, 0.99), Nullable(Int64)),
    quality_score_avg        AggregateFunction(avg, Nullable(Float64))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, tenant_id, agent_id, queue, status)
TTL minute + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.task_events_1m_mv TO {db}.task_events_1m AS
SELECT
    toStartOfMinute(event_time)                        AS minute,
    tenant_id,
    agent_id,
    queue,
    status,
    countState()                                       AS events,
    sumState(cost_usd)                                 AS cost_usd_sum,
    sumState(duration_ms)                              AS duration_ms_sum,
    quantilesState(0.5, 0.95, 0.99)(duration_ms)       AS duration_ms_quantiles,
    quantilesState(0.5, 0.95, 0.99)(queue_wait_ms)     AS queue_wait_ms_quantiles,
    avgState(quality_score)                            AS quality_score_avg
FROM {db}.task_events
GROUP BY minute, tenant_id, agent_id, queue, status;
