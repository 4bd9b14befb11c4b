-- Closed one-minute windows of LLM calls from the alerts role (topic agent.llm_windows): calls,
-- errors, tokens, cost and latency percentiles per tenant/agent/provider/model, as the real-time
-- path saw them. Late events that missed their window are not in here; the event tables and their
-- rollups stay exact.
--
--   SELECT provider, model, sum(calls), sum(errors) / sum(calls) AS error_rate, max(latency_p99_ms)
--   FROM llm_windows WHERE window_start >= now() - INTERVAL 1 HOUR GROUP BY provider, model

CREATE TABLE IF NOT EXISTS {db}.llm_windows
(
    event_id        UUID,
    event_time      DateTime64(3, 'UTC'),
    agent_id        LowCardinality(String),
    agent_type      LowCardinality(String),
    tenant_id       LowCardinality(String),
    trace_id        String,
    provider        LowCardinality(String),
    model           LowCardinality(String),
    window_start    DateTime64(3, 'UTC'),
    window_end      DateTime64(3, 'UTC'),
    calls           Int64,
    errors          Int64,
    rate_limited    Int64,
    input_tokens    Int64,
    output_tokens   Int64,
    cost_usd        Float64,
    latency_p50_ms  Float64,
    latency_p95_ms  Float64,
    latency_p99_ms  Float64,
    latency_sketch  String,
    closed_by       LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (agent_id, event_time)
TTL toDateTime(event_time) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;
