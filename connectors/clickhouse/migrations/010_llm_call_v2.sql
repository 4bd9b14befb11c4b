-- LlmCall v2 (schemas/llm_call/v2.avsc): the prompt-cache and reasoning parts of a call's tokens.
--
-- Rows inserted before this migration, and rows of v1 producers (the sinks read them into v2 with
-- the schema's defaults), hold 0: they named no such tokens. The per-minute rollup sums them too;
-- its view's query is replaced in place (MODIFY QUERY), so no insert between a drop and a create
-- is ever missed, and minutes rolled up before the migration read 0 for the new sums.

ALTER TABLE {db}.llm_calls ADD COLUMN IF NOT EXISTS cache_read_tokens Int32;
ALTER TABLE {db}.llm_calls ADD COLUMN IF NOT EXISTS cache_write_tokens Int32;
ALTER TABLE {db}.llm_calls ADD COLUMN IF NOT EXISTS reasoning_tokens Int32;

ALTER TABLE {db}.llm_calls_1m ADD COLUMN IF NOT EXISTS cache_read_tokens_sum AggregateFunction(sum, Int64);
ALTER TABLE {db}.llm_calls_1m ADD COLUMN IF NOT EXISTS cache_write_tokens_sum AggregateFunction(sum, Int64);
ALTER TABLE {db}.llm_calls_1m ADD COLUMN IF NOT EXISTS reasoning_tokens_sum AggregateFunction(sum, Int64);

ALTER TABLE {db}.llm_calls_1m_mv MODIFY QUERY
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
    quantilesState(0.5, 0.95, 0.99)(latency_ms)        AS latency_ms_quantiles,
    sumState(toInt64(cache_read_tokens))               AS cache_read_tokens_sum,
    sumState(toInt64(cache_write_tokens))              AS cache_write_tokens_sum,
    sumState(toInt64(reasoning_tokens))                AS reasoning_tokens_sum
FROM {db}.llm_calls
GROUP BY minute, tenant_id, agent_id, provider, model;
