-- Event tables: one per catalogue topic (connectors.sink.TABLES), one column per schema field.
--
-- Every table is ordered by (agent_id, event_time) for per-agent time-range scans, partitioned by
-- month so that TTL and retention drop whole parts, and keeps the hashes of its last 10,000
-- inserted blocks: a retried batch carries the same insert_deduplication_token and is skipped.
-- kafka_partition/kafka_offset say where each row came from; ingested_at when it arrived.

CREATE TABLE IF NOT EXISTS {db}.task_events
(
    event_id        UUID,
    event_time      DateTime64(3, 'UTC'),
    agent_id        LowCardinality(String),
    agent_type      LowCardinality(String),
    tenant_id       LowCardinality(String),
    trace_id        String,
    task_id         String,
    status          LowCardinality(String),
    queue           LowCardinality(String),
    attempt         Int32,
    queue_wait_ms   Nullable(Int64),
    duration_ms     Nullable(Int64),
    quality_score   Nullable(Float64),
    cost_usd        Float64,
    price_version   LowCardinality(String),
    error_category  LowCardinality(Nullable(String)),
    region          LowCardinality(Nullable(String)),
    kafka_partition Int32,
    kafka_offset    Int64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (agent_id, event_time)
TTL toDateTime(event_time) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {db}.llm_calls
(
    event_id        UUID,
    event_time      DateTime64(3, 'UTC'),
    agent_id        LowCardinality(String),
    agent_type      LowCardinality(String),
    tenant_id       LowCardinality(String),
    trace_id        String,
    call_id         String,
    task_id         Nullable(String),
    provider        LowCardinality(String),
    model           LowCardinality(String),
    api_key_alias   LowCardinality(String),
    input_tokens    Int32,
    output_tokens   Int32,
    cost_usd        Float64,
    price_version   LowCardinality(String),
    latency_ms      Float64,
    status          LowCardinality(String),
    cache_hit       Bool,
    region          LowCardinality(Nullable(String)),
    prompt_snippet  Nullable(String),
    output_snippet  Nullable(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (agent_id, event_time)
TTL toDateTime(event_time) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {db}.telemetry
(
    event_id         UUID,
    event_time       DateTime64(3, 'UTC'),
    agent_id         LowCardinality(String),
    agent_type       LowCardinality(String),
    tenant_id        LowCardinality(String),
    trace_id         String,
    cpu_percent      Float64,
    memory_percent   Float64,
    memory_mb        Float64,
    response_time_ms Float64,
    error_count      Int32,
    queue_depth      Int32,
    region           LowCardinality(Nullable(String)),
    kafka_partition  Int32,
    kafka_offset     Int64,
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (agent_id, event_time)
TTL toDateTime(event_time) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {db}.alerts
(
    event_id        UUID,
    event_time      DateTime64(3, 'UTC'),
    agent_id        LowCardinality(String),
    agent_type      LowCardinality(String),
    tenant_id       LowCardinality(String),
    trace_id        String,
    alert_id        String,
    kind            LowCardinality(String),
    severity        LowCardinality(String),
    state           LowCardinality(String),
    subject         String,
    message         String,
    value           Float64,
    threshold       Float64,
    window_start    Nullable(DateTime64(3, 'UTC')),
    window_end      Nullable(DateTime64(3, 'UTC')),
    first_seen      DateTime64(3, 'UTC'),
    last_seen       DateTime64(3, 'UTC'),
    details         Map(String, String),
    kafka_partition Int32,
    kafka_offset    Int64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (agent_id, event_time)
TTL toDateTime(event_time) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;
