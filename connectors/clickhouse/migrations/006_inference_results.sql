-- Results of the inference workers (topic inference.results) and the knowledge store built on
-- them: inference_vectors holds one row per embedded input, its vector an Array(Float32), for
-- nearest-neighbour search by cosine distance (`ezstream search "text" -k 5`):
--
--   SELECT correlation_id, input_index, agent_id, cosineDistance(embedding, [0.01, …]) AS distance
--   FROM inference_vectors WHERE model = 'all-MiniLM-L6-v2' ORDER BY distance LIMIT 5

CREATE TABLE IF NOT EXISTS {db}.inference_results
(
    event_id        UUID,
    event_time      DateTime64(3, 'UTC'),
    agent_id        LowCardinality(String),
    agent_type      LowCardinality(String),
    tenant_id       LowCardinality(String),
    trace_id        String,
    correlation_id  String,
    model           LowCardinality(String),
    model_version   LowCardinality(String),
    embeddings      Array(Array(Float32)),
    queue_ms        Float64,
    compute_ms      Float64,
    error           Nullable(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (agent_id, event_time)
TTL toDateTime(event_time) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {db}.inference_vectors
(
    event_time      DateTime64(3, 'UTC'),
    agent_id        LowCardinality(String),
    tenant_id       LowCardinality(String),
    trace_id        String,
    correlation_id  String,
    input_index     UInt32,
    model           LowCardinality(String),
    model_version   LowCardinality(String),
    embedding       Array(Float32)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (model, tenant_id, event_time)
TTL toDateTime(event_time) + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.inference_vectors_mv TO {db}.inference_vectors AS
SELECT
    event_time,
    agent_id,
    tenant_id,
    trace_id,
    correlation_id,
    toUInt32(input_index - 1) AS input_index,
    model,
    model_version,
    embedding
FROM {db}.inference_results
ARRAY JOIN embeddings AS embedding, arrayEnumerate(embeddings) AS input_index
WHERE error IS NULL;
