"""The dashboards: fleet cost, LLM performance and tasks over ClickHouse's rollups, alerts over the
alerts table, pipeline health over the workers' Prometheus metrics.

Rollup columns hold aggregate states (``connectors/clickhouse/migrations/002_rollups.sql``), read
with the -Merge form of their function. Times are UTC, like the tables. The ClickHouse panels use
the plugin's macros: ``$__timeFilter(column)``, ``$__timeInterval(column)`` (the panel's interval)
and ``$__conditionalAll(condition, $variable)`` (no filter while the variable is "All").
"""

from __future__ import annotations

import json
from collections.abc import Callable

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from infra.grafana.panels import (SQL, bars, choice_variable, graph, new_dashboard, number, promql, rows, section,
                                  sql_variable)

TENANT = "$__conditionalAll(tenant_id IN (${tenant:singlequote}), $tenant)"
PROVIDER = "$__conditionalAll(provider IN (${provider:singlequote}), $provider)"
QUEUE = "$__conditionalAll(queue IN (${queue:singlequote}), $queue)"
KIND = "$__conditionalAll(kind IN (${kind:singlequote}), $kind)"
SEVERITY = "$__conditionalAll(severity IN (${severity:singlequote}), $severity)"
#: The LLM-call rollup in the panel's range, for the chosen tenants and providers.
CALLS = f"llm_calls_1m WHERE $__timeFilter(minute) AND {TENANT} AND {PROVIDER}"
TASKS = f"task_events_1m WHERE $__timeFilter(minute) AND {TENANT} AND {QUEUE}"
ALERTS = f"alerts WHERE $__timeFilter(event_time) AND {KIND} AND {SEVERITY} AND {TENANT}"
TERMINAL = "('completed', 'failed', 'cancelled')"
#: The kinds and severities an alert may have, as the alerts dashboard offers them: the symbols of
#: the Alert schema (connectors/kafka/events.py; tests/unit/test_grafana.py checks that each is here).
ALERT_KINDS = ("budget", "budget_forecast", "error_rate", "rate_limit_storm", "silent_agent", "stuck_task", "other")
SEVERITIES = ("critical", "warning", "info", "unknown")

RED_ABOVE_ZERO = ((None, "green"), (1, "red"))


def _links() -> dashboard.DashboardLink:
    return (dashboard.DashboardLink("EzAigent Streams").type(model.DashboardLinkType.DASHBOARDS)
            .tags(["ezstream"]).as_dropdown(True).include_vars(True).keep_time(True))


def _llm_variables(board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (board
            .with_variable(sql_variable("tenant", "Tenant", "SELECT DISTINCT tenant_id FROM llm_calls_1m "
                                        "WHERE $__timeFilter(minute) ORDER BY tenant_id"))
            .with_variable(sql_variable("provider", "Provider", "SELECT DISTINCT provider FROM llm_calls_1m "
                                        "WHERE $__timeFilter(minute) ORDER BY provider")))


def fleet_cost() -> dashboard.Dashboard:
    """Spend per tenant, provider and model (llm_calls_1m) and the tenants' daily budgets."""
    board = _llm_variables(new_dashboard(
        "ezstream-fleet-cost", "EzAigent Streams / Fleet cost",
        "LLM spend per tenant, provider and model from the per-minute rollup llm_calls_1m, and the tenants' "
        "daily budgets as the budget alerts saw them.", ["cost"], since="now-24h")).link(_links())
    return (board
            .with_row(section("Spend"))
            .with_panel(number("Spend", SQL(f"SELECT sumMerge(cost_usd_sum) AS spend_usd FROM {CALLS}"),
                               unit="currencyUSD", description="LLM spend in the time range."))
            .with_panel(number("Calls", SQL(f"SELECT countMerge(calls) AS call_count FROM {CALLS}")))
            .with_panel(number("Tokens", SQL(
                f"SELECT sumMerge(input_tokens_sum) + sumMerge(output_tokens_sum) AS tokens FROM {CALLS}"),
                description="Input and output tokens (cache reads and reasoning are parts of them)."))
            .with_panel(number("Cost per 1,000 calls", SQL(
                f"SELECT 1000 * sumMerge(cost_usd_sum) / nullIf(countMerge(calls), 0) AS usd_per_1k_calls "
                f"FROM {CALLS}"), unit="currencyUSD"))
            .with_panel(graph("Spend per tenant", SQL(f"""
                SELECT $__timeInterval(minute) AS time, tenant_id, sumMerge(cost_usd_sum) AS spend_usd
                FROM {CALLS}
                GROUP BY time, tenant_id ORDER BY time""", time_series=True), unit="currencyUSD", stacked=True,
                bars=True))
            .with_panel(graph("Spend per provider", SQL(f"""
                SELECT $__timeInterval(minute) AS time, provider, sumMerge(cost_usd_sum) AS spend_usd
                FROM {CALLS}
                GROUP BY time, provider ORDER BY time""", time_series=True), unit="currencyUSD", stacked=True,
                bars=True))
            .with_panel(bars("Top models by spend", SQL(f"""
                SELECT concat(provider, '/', model) AS provider_model, sumMerge(cost_usd_sum) AS spend_usd
                FROM {CALLS}
                GROUP BY provider_model ORDER BY spend_usd DESC LIMIT 15"""), unit="currencyUSD"))
            .with_panel(bars("Top agents by spend", SQL(f"""
                SELECT agent_id, sumMerge(cost_usd_sum) AS spend_usd
                FROM {CALLS}
                GROUP BY agent_id ORDER BY spend_usd DESC LIMIT 15"""), unit="currencyUSD"))
            .with_panel(rows("Spend per tenant, provider and model", SQL(f"""
                SELECT tenant_id, provider, model,
                       countMerge(calls) AS call_count,
                       sumMerge(errors) AS failed_calls,
                       sumMerge(input_tokens_sum) AS input_token_count,
                       sumMerge(output_tokens_sum) AS output_token_count,
                       sumMerge(cache_read_tokens_sum) AS cache_read_token_count,
                       sumMerge(cache_write_tokens_sum) AS cache_write_token_count,
                       sumMerge(reasoning_tokens_sum) AS reasoning_token_count,
                       sumMerge(cost_usd_sum) AS spend_usd
                FROM {CALLS}
                GROUP BY tenant_id, provider, model ORDER BY spend_usd DESC LIMIT 500"""), height=10))
            .with_row(section("Budgets"))
            .with_panel(bars("Spend today (UTC) per tenant", SQL(f"""
                SELECT tenant_id, sumMerge(cost_usd_sum) AS spend_today_usd
                FROM llm_calls_1m
                WHERE minute >= toStartOfDay(now('UTC')) AND {TENANT} AND {PROVIDER}
                GROUP BY tenant_id ORDER BY spend_today_usd DESC LIMIT 20"""), unit="currencyUSD",
                description="Budgets are daily, per UTC day (EZ_BUDGETS_FILE)."))
            .with_panel(rows("Budget use per tenant and day (budget alerts)", SQL("""
                SELECT details['day'] AS day, subject AS tenant,
                       max(value) AS spent_usd,
                       max(toFloat64OrNull(details['budget_usd'])) AS budget_usd,
                       round(100 * spent_usd / budget_usd, 1) AS used_pct,
                       max(toUInt8OrZero(details['percent'])) AS crossed_pct
                FROM alerts
                WHERE kind = 'budget' AND state = 'firing' AND details['scope'] = 'tenant'
                      AND $__timeFilter(event_time)
                      AND $__conditionalAll(subject IN (${tenant:singlequote}), $tenant)
                GROUP BY day, tenant ORDER BY day DESC, used_pct DESC LIMIT 200"""), width=12,
                description="The spend each tenant's last budget alert of a day reported, against its daily "
                            "budget: a tenant appears once it crossed 80% of it."))
            .with_panel(rows("Budget forecasts", SQL(f"""
                SELECT subject, argMax(tenant_id, event_time) AS tenant, argMax(state, event_time) AS last_state,
                       argMax(message, event_time) AS last_message, max(event_time) AS at
                FROM alerts
                WHERE kind = 'budget_forecast' AND $__timeFilter(event_time) AND {TENANT}
                GROUP BY subject ORDER BY at DESC LIMIT 100"""), width=24,
                description="Budgets the recent burn rate will exhaust before the day ends."))
            )


def llm_performance() -> dashboard.Dashboard:
    """Latency quantiles, error and rate-limit ratios per provider and model."""
    board = _llm_variables(new_dashboard(
        "ezstream-llm-performance", "EzAigent Streams / LLM performance",
        "Latency quantiles and error ratios of LLM calls from the rollup llm_calls_1m; rate limiting from the "
        "alerts role's closed windows (llm_windows).", ["llm"])).link(_links())
    quantile = "quantilesMerge(0.5, 0.95, 0.99)(latency_ms_quantiles)"
    return (board
            .with_panel(graph("Latency, all calls", SQL(f"""
                SELECT $__timeInterval(minute) AS time,
                       {quantile}[1] AS p50_ms, {quantile}[2] AS p95_ms, {quantile}[3] AS p99_ms
                FROM {CALLS}
                GROUP BY time ORDER BY time""", time_series=True), unit="ms"))
            .with_panel(graph("p95 latency per provider", SQL(f"""
                SELECT $__timeInterval(minute) AS time, provider, {quantile}[2] AS p95_ms
                FROM {CALLS}
                GROUP BY time, provider ORDER BY time""", time_series=True), unit="ms"))
            .with_panel(graph("Error ratio per provider", SQL(f"""
                SELECT $__timeInterval(minute) AS time, provider,
                       sumMerge(errors) / countMerge(calls) AS error_ratio
                FROM {CALLS}
                GROUP BY time, provider ORDER BY time""", time_series=True), unit="percentunit",
                description="Calls whose status is not ok (error, rate_limited, timeout)."))
            .with_panel(graph("Rate-limited ratio per provider", SQL(f"""
                SELECT $__timeInterval(window_start) AS time, provider,
                       sum(rate_limited) / nullIf(sum(calls), 0) AS rate_limited_ratio
                FROM llm_windows
                WHERE $__timeFilter(window_start) AND {TENANT} AND {PROVIDER}
                GROUP BY time, provider ORDER BY time""", time_series=True), unit="percentunit",
                description="From the alerts role's one-minute windows; late calls are not in them."))
            .with_panel(graph("Calls per minute per provider", SQL(f"""
                SELECT $__timeInterval(minute) AS time, provider,
                       countMerge(calls) * 60 / $__interval_s AS calls_per_minute
                FROM {CALLS}
                GROUP BY time, provider ORDER BY time""", time_series=True), unit="short", width=24))
            .with_panel(rows("Per provider and model", SQL(f"""
                SELECT provider, model,
                       countMerge(calls) AS call_count,
                       sumMerge(errors) / call_count AS error_ratio,
                       {quantile}[1] AS p50_ms, {quantile}[2] AS p95_ms, {quantile}[3] AS p99_ms,
                       sumMerge(output_tokens_sum) / call_count AS output_tokens_per_call
                FROM {CALLS}
                GROUP BY provider, model ORDER BY call_count DESC LIMIT 200"""), height=10))
            )


def tasks() -> dashboard.Dashboard:
    """Task outcomes, queue waits and run times per queue (task_events_1m)."""
    board = (new_dashboard(
        "ezstream-tasks", "EzAigent Streams / Tasks",
        "Task outcomes, queue waits and run times per queue from the per-minute rollup task_events_1m.",
        ["tasks"]).link(_links())
        .with_variable(sql_variable("tenant", "Tenant", "SELECT DISTINCT tenant_id FROM task_events_1m "
                                    "WHERE $__timeFilter(minute) ORDER BY tenant_id"))
        .with_variable(sql_variable("queue", "Queue", "SELECT DISTINCT queue FROM task_events_1m "
                                    "WHERE $__timeFilter(minute) ORDER BY queue")))
    finished = f"countMergeIf(events, status IN {TERMINAL})"
    wait = "quantilesMerge(0.5, 0.95, 0.99)(queue_wait_ms_quantiles)"
    run = "quantilesMerge(0.5, 0.95, 0.99)(duration_ms_quantiles)"
    return (board
            .with_panel(number("Success ratio", SQL(f"""
                SELECT countMergeIf(events, status = 'completed') / nullIf({finished}, 0) AS success_ratio
                FROM {TASKS}"""), unit="percentunit",
                thresholds=((None, "red"), (0.9, "orange"), (0.98, "green")),
                description="Completed attempts among the finished ones (completed, failed, cancelled)."))
            .with_panel(number("Finished attempts", SQL(f"SELECT {finished} AS finished FROM {TASKS}")))
            .with_panel(number("Failed attempts", SQL(f"""
                SELECT countMergeIf(events, status = 'failed') AS failed FROM {TASKS}"""),
                thresholds=RED_ABOVE_ZERO))
            .with_panel(number("Task cost", SQL(f"SELECT sumMerge(cost_usd_sum) AS cost_usd FROM {TASKS}"),
                               unit="currencyUSD"))
            .with_panel(graph("Finished attempts per status", SQL(f"""
                SELECT $__timeInterval(minute) AS time, status, countMerge(events) AS attempts
                FROM {TASKS} AND status IN {TERMINAL}
                GROUP BY time, status ORDER BY time""", time_series=True), stacked=True, bars=True))
            .with_panel(graph("Success ratio per queue", SQL(f"""
                SELECT $__timeInterval(minute) AS time, queue,
                       countMergeIf(events, status = 'completed') / nullIf({finished}, 0) AS success_ratio
                FROM {TASKS}
                GROUP BY time, queue ORDER BY time""", time_series=True), unit="percentunit"))
            .with_panel(graph("p95 queue wait per queue", SQL(f"""
                SELECT $__timeInterval(minute) AS time, queue, {wait}[2] AS wait_p95_ms
                FROM {TASKS}
                GROUP BY time, queue ORDER BY time""", time_series=True), unit="ms",
                description="From an attempt's queued event to its start."))
            .with_panel(graph("p95 run time per queue", SQL(f"""
                SELECT $__timeInterval(minute) AS time, queue, {run}[2] AS duration_p95_ms
                FROM {TASKS}
                GROUP BY time, queue ORDER BY time""", time_series=True), unit="ms"))
            .with_panel(rows("Per queue", SQL(f"""
                SELECT queue,
                       countMergeIf(events, status = 'completed') AS completed,
                       countMergeIf(events, status = 'failed') AS failed,
                       countMergeIf(events, status = 'cancelled') AS cancelled,
                       completed / nullIf(completed + failed + cancelled, 0) AS success_ratio,
                       {wait}[1] AS wait_p50_ms, {wait}[2] AS wait_p95_ms, {wait}[3] AS wait_p99_ms,
                       {run}[2] AS duration_p95_ms,
                       avgMerge(quality_score_avg) AS quality_score_mean,
                       sumMerge(cost_usd_sum) AS cost_usd
                FROM {TASKS}
                GROUP BY queue ORDER BY queue"""), height=8))
            )


def _rate(metric: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}[$__rate_interval]))"


def pipeline_health() -> dashboard.Dashboard:
    """The workers' Prometheus metrics (streams/metrics.py)."""
    board = new_dashboard(
        "ezstream-pipeline-health", "EzAigent Streams / Pipeline health",
        "The workers' Prometheus metrics (EZ_METRICS_PORT): throughput, dead letters, lag, sink retries and "
        "pauses, role restarts, the alerts role's state and the inference worker.", ["pipeline"],
        refresh="30s", since="now-3h").link(_links())
    return (board
            .with_row(section("Flow"))
            .with_panel(graph("Events in per second", promql(_rate("ezstream_events_in_total", "role, topic"),
                                                             "{{role}} {{topic}}"), unit="ops"))
            .with_panel(graph("Rows written per second", promql(_rate("ezstream_rows_written_total", "sink, table"),
                                                                "{{sink}} {{table}}"), unit="ops"))
            .with_panel(graph("Dead letters", promql(
                "sum by (role, topic, error_class) (increase(ezstream_dead_letters_total[$__rate_interval]))",
                "{{topic}} {{error_class}}"), unit="short", bars=True))
            .with_panel(graph("Consumer lag", promql("sum by (group, topic) (ezstream_consumer_lag)",
                                                     "{{group}} {{topic}}"), unit="short",
                              description="Messages behind the end of the partitions, per consumer group."))
            .with_panel(graph("Flush time p95", promql(
                "histogram_quantile(0.95, sum by (sink, le) (rate(ezstream_flush_seconds_bucket[$__rate_interval])))",
                "{{sink}}"), unit="s", width=8))
            .with_panel(graph("Messages per batch", promql(
                "sum by (sink) (rate(ezstream_batch_rows_sum[$__rate_interval]))"
                " / sum by (sink) (rate(ezstream_batch_rows_count[$__rate_interval]))", "{{sink}}"), width=8))
            .with_panel(graph("Bytes per batch", promql(
                "sum by (sink) (rate(ezstream_batch_bytes_sum[$__rate_interval]))"
                " / sum by (sink) (rate(ezstream_batch_bytes_count[$__rate_interval]))", "{{sink}}"),
                unit="bytes", width=8))
            .with_row(section("Sinks and roles"))
            .with_panel(graph("Sink retries per second", promql(_rate("ezstream_sink_retries_total", "sink"), "{{sink}}"),
                              unit="ops", width=8, description="The store was down or slow; the partitions pause."))
            .with_panel(graph("Paused and halted partitions", promql(
                "sum by (role) (ezstream_paused_partitions)", "paused {{role}}"), promql(
                "sum by (role) (ezstream_halted_partitions)", "halted {{role}}", ref_id="B"), width=8,
                description="Halted: the DLQ refused a dead letter for good; the partition waits for an operator."))
            .with_panel(graph("Role restarts", promql(
                "sum by (role) (increase(ezstream_role_restarts_total[$__rate_interval]))", "{{role}}"),
                promql("count by (role) (ezstream_role_up == 0)", "down {{role}}", ref_id="B"), width=8,
                bars=True, description="Crashes after which the supervisor started a role again."))
            .with_panel(graph("Spans read per second", promql(_rate("ezstream_spans_total", "outcome"), "{{outcome}}"),
                              unit="ops", width=24, height=6))
            .with_row(section("Alerts role"))
            .with_panel(graph("Alerts produced", promql(
                "sum by (kind, state) (increase(ezstream_alerts_total[$__rate_interval]))", "{{kind}} {{state}}"),
                bars=True, width=8))
            .with_panel(graph("Windows closed per second", promql(
                _rate("ezstream_windows_closed_total", "closed_by"), "{{closed_by}}"), unit="ops", width=8))
            .with_panel(graph("Event-time skew", promql(
                "max by (shard) (ezstream_alerts_event_time_skew_seconds)", "shard {{shard}}"), unit="s", width=8,
                description="How far apart the LLM-call partitions' event times are; windows close on the slowest."))
            .with_panel(graph("Late events", promql("sum by (rule) (ezstream_late_events)", "{{rule}}"), width=8))
            .with_panel(graph("State entries", promql("sum by (rule) (ezstream_alerts_state_entries)", "{{rule}}"),
                              width=8))
            .with_panel(graph("Checkpoint size", promql(
                "max by (shard) (ezstream_alerts_checkpoint_bytes)", "shard {{shard}}"), unit="bytes", width=8))
            .with_row(section("Inference"))
            .with_panel(graph("Requests, results and errors per second", promql(
                "sum(rate(ezstream_inference_requests_total[$__rate_interval]))", "requests"), promql(
                "sum(rate(ezstream_inference_results_total[$__rate_interval]))", "results", ref_id="B"), promql(
                "sum(rate(ezstream_inference_errors_total[$__rate_interval]))", "errors", ref_id="C"),
                unit="ops", width=8))
            .with_panel(graph("Texts waiting", promql("sum(ezstream_inference_queue_texts)", "texts"), width=8))
            .with_panel(graph("Forward pass p95 and texts per pass", promql(
                "histogram_quantile(0.95, sum by (le) (rate(ezstream_inference_forward_seconds_bucket[$__rate_interval])))",
                "forward p95 (s)"), promql(
                "sum(rate(ezstream_inference_batch_texts_sum[$__rate_interval]))"
                " / sum(rate(ezstream_inference_batch_texts_count[$__rate_interval]))", "texts per pass", ref_id="B"),
                width=8))
            )


def alerts() -> dashboard.Dashboard:
    """The alerts table: what fired, what is open, budget forecasts."""
    board = (new_dashboard(
        "ezstream-alerts", "EzAigent Streams / Alerts",
        "Alerts of the real-time rules (topic agent.alerts, table alerts): budgets and budget forecasts, error "
        "rates, rate-limit storms, silent agents, stuck tasks.", ["alerts"], since="now-24h").link(_links())
        .with_variable(choice_variable("kind", "Kind", ALERT_KINDS))
        .with_variable(choice_variable("severity", "Severity", SEVERITIES))
        .with_variable(sql_variable("tenant", "Tenant", "SELECT DISTINCT tenant_id FROM alerts "
                                    "WHERE $__timeFilter(event_time) ORDER BY tenant_id")))
    return (board
            .with_panel(bars("Fired per kind", SQL(f"""
                SELECT kind, countIf(state = 'firing') AS fired
                FROM {ALERTS}
                GROUP BY kind ORDER BY fired DESC"""), width=8, height=8))
            .with_panel(graph("Fired over time", SQL(f"""
                SELECT $__timeInterval(event_time) AS time, kind, count() AS fired
                FROM {ALERTS} AND state = 'firing'
                GROUP BY time, kind ORDER BY time""", time_series=True), stacked=True, bars=True, width=16))
            .with_panel(rows("Open now", SQL(f"""
                SELECT alert_id,
                       argMax(kind, event_time) AS alert_kind,
                       argMax(severity, event_time) AS alert_severity,
                       argMax(subject, event_time) AS alert_subject,
                       argMax(tenant_id, event_time) AS tenant,
                       argMax(message, event_time) AS last_message,
                       min(first_seen) AS since,
                       argMax(state, event_time) AS last_state
                FROM alerts
                WHERE event_time >= now() - INTERVAL 7 DAY AND {KIND} AND {SEVERITY} AND {TENANT}
                GROUP BY alert_id HAVING last_state = 'firing'
                ORDER BY since LIMIT 500"""), height=8,
                description="Conditions whose latest event in the last 7 days is firing."))
            .with_panel(rows("Budget forecasts", SQL(f"""
                SELECT event_time, state, severity, subject, tenant_id, message, value, threshold, window_end
                FROM alerts
                WHERE kind = 'budget_forecast' AND $__timeFilter(event_time) AND {SEVERITY} AND {TENANT}
                ORDER BY event_time DESC LIMIT 200"""), height=8,
                description="The day's budget will run out at the recent burn rate (kind budget_forecast)."))
            .with_panel(rows("Recent alerts", SQL(f"""
                SELECT event_time, kind, severity, state, subject, tenant_id, agent_id, message, value, threshold
                FROM {ALERTS}
                ORDER BY event_time DESC LIMIT 500"""), height=12))
            )


#: Every dashboard, by the uid that names its file.
DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "ezstream-fleet-cost": fleet_cost,
    "ezstream-llm-performance": llm_performance,
    "ezstream-tasks": tasks,
    "ezstream-pipeline-health": pipeline_health,
    "ezstream-alerts": alerts,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    texts = {}
    for uid, make in DASHBOARDS.items():
        built = make().build()
        if built.uid != uid:
            raise ValueError(f"dashboard {uid} builds the uid {built.uid}")
        # Stable panel ids (links to a panel name it by id), in the order of the grid.
        for number_, panel in enumerate(built.panels or [], start=1):
            panel.id_val = number_
        for variable in built.templating.list_val or []:
            if variable.type_val != model.VariableType.INTERVAL:
                # The SDK writes an interval variable's settings on every variable; Grafana's
                # dashboard schema has no such fields (infra/grafana/schema.py checks it).
                variable.auto = variable.auto_min = variable.auto_count = None
        texts[f"{uid}.json"] = json.dumps(built, cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"
    return texts
