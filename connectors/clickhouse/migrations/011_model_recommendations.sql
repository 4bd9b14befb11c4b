-- Model recommendations (connectors/batch/recommend.py; DAG model_recommendations, `ezstream
-- recommend`): per day, tenant, agent type and queue, the cheapest model whose quality is within
-- EZ_RECOMMEND_QUALITY_TOLERANCE of the model used now, with the projected monthly saving. A group
-- where no cheaper model qualifies has no row. Each run of a day deletes the day's rows, then
-- inserts the new ones, so a rerun replaces the day.

CREATE TABLE IF NOT EXISTS {db}.model_recommendations
(
    day                              Date,
    tenant_id                        String,
    agent_type                       String,
    queue                            String,
    current_provider                 String,
    current_model                    String,
    current_quality                  Float64,
    current_cost_per_success_usd     Float64,
    recommended_provider             String,
    recommended_model                String,
    recommended_quality              Float64,
    recommended_cost_per_success_usd Float64,
    monthly_saving_usd               Float64,
    successful_tasks                 UInt64,
    computed_at                      DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, tenant_id, agent_type, queue);
