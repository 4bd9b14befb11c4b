"""The dashboard's panels: one function per panel, each returning rows (dicts, JSON-friendly).

The page (``streams/dashboard/app.py``) and the tests call the same functions, so what the page
shows is what these queries return. ClickHouse panels take ``run``, a function that runs one
read-only SELECT and returns column names and rows (:func:`source` makes the page's), and the
project's database name; the Kafka panels take the settings.

Times are UTC. "Today" is the UTC day, as for the budget alerts (``streams/intelligence/alerts.py``):
a day's spend is the ``cost_usd`` of its LLM calls by event time. Spend, latency and error figures
come from the per-minute rollups (``llm_calls_1m``, ``task_events_1m``; their columns are aggregate
states, read with the ``-Merge`` functions), alerts from ``alerts`` (the latest event of each
``alert_id`` is its state).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from connectors.clickhouse import is_embedded
from connectors.settings import Settings

#: Runs one read-only SELECT: column names and rows.
Run = Callable[[str], tuple[list[str], list[list[Any]]]]

#: Longest a panel's query may take: the page refreshes every few seconds.
QUERY_TIMEOUT_S = 30.0

#: Longest a Kafka panel waits for the broker.
KAFKA_TIMEOUT_S = 5.0

#: What spend can be broken down by, and the columns of each breakdown.
SPEND_KEYS = {"tenant": ("tenant_id",), "provider": ("provider",), "model": ("provider", "model")}

#: Alert kind of the budget forecasts: a tenant's or agent's spend projected past its daily budget.
FORECAST_KIND = "budget_forecast"

#: Table of the model recommendations (cheaper models of the same quality per tenant, agent type
#: and queue), when a job made it.
RECOMMENDATIONS_TABLE = "model_recommendations"

_server_lock = threading.Lock()

_TIME = "'%Y-%m-%d %H:%i:%S'"
_TODAY = "minute >= toStartOfDay(now('UTC'))"
_LAST_HOUR = "minute >= toStartOfMinute(now('UTC')) - INTERVAL 59 MINUTE"


def source(settings: Settings) -> Run:
    """The page's ``run``: queries where the engine is, through the worker that holds the embedded
    engine (its query server, as ``ezstream sql``) or on the server of a server DSN.

    Unlike ``ezstream sql`` it never opens the embedded engine itself: chDB allows one engine per
    folder, and a long-lived dashboard holding it would keep a worker from starting. Without such a
    worker each panel says so (:class:`~connectors.errors.TransientError`, from
    :func:`~streams.query_server.query_worker`) until one runs.
    """
    # Not query(): it would fall back to opening the engine here when the worker is gone.
    from streams.query_server import query_worker, run_query

    def run(sql: str) -> tuple[list[str], list[list[Any]]]:
        if not is_embedded(settings):
            # One client per process, one session per client: the page's sessions take turns.
            with _server_lock:
                return run_query(settings, sql)
        return query_worker(settings, sql, QUERY_TIMEOUT_S)

    return run


def rows(run: Run, sql: str) -> list[dict[str, Any]]:
    """``sql``'s result as one dict per row."""
    columns, values = run(sql)
    return [dict(zip(columns, row)) for row in values]


def spend_now(run: Run, db: str) -> dict[str, Any]:
    """LLM spend today and in the last 60 minutes, and today's calls."""
    return rows(run, f"""
        SELECT sumMergeIf(cost_usd_sum, {_TODAY}) AS today_usd,
               sumMergeIf(cost_usd_sum, {_LAST_HOUR}) AS last_hour_usd,
               countMergeIf(calls, {_TODAY}) AS calls_today
        FROM {db}.llm_calls_1m
        WHERE minute >= least(toStartOfDay(now('UTC')), toStartOfMinute(now('UTC')) - INTERVAL 59 MINUTE)""")[0]


def spend_by(run: Run, db: str, by: str) -> list[dict[str, Any]]:
    """Spend today and in the last 60 minutes per tenant, provider or model (``by``), dearest first."""
    keys = ", ".join(_spend_keys(by))
    return rows(run, f"""
        SELECT {keys}, sumMergeIf(cost_usd_sum, {_TODAY}) AS today_usd,
               sumMergeIf(cost_usd_sum, {_LAST_HOUR}) AS last_hour_usd,
               countMergeIf(calls, {_TODAY}) AS calls_today
        FROM {db}.llm_calls_1m
        WHERE minute >= least(toStartOfDay(now('UTC')), toStartOfMinute(now('UTC')) - INTERVAL 59 MINUTE)
        GROUP BY {keys} ORDER BY today_usd DESC, last_hour_usd DESC, {keys}""")


def spend_per_hour(run: Run, db: str, by: str, hours: int = 24) -> list[dict[str, Any]]:
    """Spend per hour of the last ``hours`` hours per tenant, provider or model (``by``)."""
    keys = _spend_keys(by)
    label = keys[0] if len(keys) == 1 else f"concat({keys[0]}, '/', {keys[1]})"
    return rows(run, f"""
        SELECT formatDateTime(toStartOfHour(minute), '%Y-%m-%d %H:00') AS hour, {label} AS key,
               sumMerge(cost_usd_sum) AS cost_usd
        FROM {db}.llm_calls_1m
        WHERE minute >= toStartOfHour(now('UTC')) - INTERVAL {int(hours) - 1} HOUR
        GROUP BY hour, key ORDER BY hour, key""")


def budget_use(run: Run, db: str, budgets: Any) -> list[dict[str, Any]]:
    """Today's spend of each tenant and agent with a daily budget, against it, most used first.

    :param budgets: a :class:`~streams.intelligence.alerts.Budgets` (``EZ_BUDGETS_FILE``).
    """
    spent = rows(run, f"""
        SELECT 'tenant' AS scope, tenant_id AS subject, sumMerge(cost_usd_sum) AS spend_usd
        FROM {db}.llm_calls_1m WHERE {_TODAY} GROUP BY tenant_id
        UNION ALL
        SELECT 'agent' AS scope, agent_id AS subject, sumMerge(cost_usd_sum) AS spend_usd
        FROM {db}.llm_calls_1m WHERE {_TODAY} GROUP BY agent_id""")
    out = []
    for row in spent:
        budget = budgets.daily_usd(row["scope"], row["subject"])
        if budget is None:
            continue
        spend = float(row["spend_usd"])
        out.append({"scope": row["scope"], "subject": row["subject"], "spend_usd": spend,
                    "budget_usd": float(budget), "used_pct": spend / budget * 100 if budget else None})
    return sorted(out, key=lambda r: (r["scope"] != "tenant", -(r["used_pct"] or 0.0), r["subject"]))


def _latest_alerts(db: str, where: str = "") -> str:
    """Each alert's latest event (its state): a resolved event wins a tie with its firing."""
    return (f"SELECT * FROM {db}.alerts {where} "
            f"ORDER BY alert_id, event_time DESC, state = 'resolved' DESC LIMIT 1 BY alert_id")


def budget_forecasts(run: Run, db: str) -> list[dict[str, Any]]:
    """Per tenant or agent, its latest firing budget forecast (alerts of kind ``budget_forecast``),
    soonest projected overrun first; none until the forecasting rule raised one."""
    return rows(run, f"""
        SELECT * FROM (
            SELECT subject, details['projected_at'] AS projected_at,
                   toFloat64OrNull(details['projected_spend_usd']) AS projected_spend_usd,
                   toFloat64OrNull(details['budget_usd']) AS budget_usd,
                   toFloat64OrNull(details['burn_rate_usd_per_hour']) AS burn_rate_usd_per_hour,
                   formatDateTime(event_time, {_TIME}) AS raised_at, message
            FROM ({_latest_alerts(db, f"WHERE kind = '{FORECAST_KIND}'")})
            WHERE state = 'firing'
            ORDER BY subject, event_time DESC LIMIT 1 BY subject)
        ORDER BY projected_at, subject""")


def alert_counts(run: Run, db: str) -> dict[str, Any]:
    """Alerts firing now, and those resolved in the last hour."""
    return rows(run, f"""
        SELECT countIf(state = 'firing') AS active,
               countIf(state = 'resolved' AND event_time >= now64(3, 'UTC') - INTERVAL 1 HOUR) AS resolved_last_hour
        FROM ({_latest_alerts(db)})""")[0]


def alerts(run: Run, db: str, limit: int = 50) -> list[dict[str, Any]]:
    """The latest state of each alert: firing ones first, then the most recent."""
    return rows(run, f"""
        SELECT state, kind, severity, subject, message, value, threshold,
               formatDateTime(first_seen, {_TIME}) AS first_seen, formatDateTime(event_time, {_TIME}) AS at
        FROM ({_latest_alerts(db)})
        ORDER BY state = 'firing' DESC, event_time DESC, alert_id LIMIT {int(limit)}""")


def llm_health(run: Run, db: str, minutes: int = 60) -> list[dict[str, Any]]:
    """Per provider and model over the last ``minutes``: calls, errors, error rate, latency
    percentiles (ms)."""
    return rows(run, f"""
        SELECT provider, model, n_calls AS calls, n_errors AS errors,
               round(100 * n_errors / n_calls, 2) AS error_pct,
               round(q[1], 1) AS p50_ms, round(q[2], 1) AS p95_ms, round(q[3], 1) AS p99_ms
        FROM (
            SELECT provider, model, countMerge(calls) AS n_calls, sumMerge(errors) AS n_errors,
                   quantilesMerge(0.5, 0.95, 0.99)(latency_ms_quantiles) AS q
            FROM {db}.llm_calls_1m
            WHERE minute >= toStartOfMinute(now('UTC')) - INTERVAL {int(minutes) - 1} MINUTE
            GROUP BY provider, model)
        ORDER BY calls DESC, provider, model""")


def tasks(run: Run, db: str, minutes: int = 60) -> list[dict[str, Any]]:
    """Per queue over the last ``minutes``: tasks started, completed, failed and cancelled, the
    success rate of the finished ones, and queue-wait percentiles (ms) of the started attempts."""
    return rows(run, f"""
        SELECT queue, started, completed, failed, cancelled,
               if(completed + failed + cancelled = 0, NULL,
                  round(100 * completed / (completed + failed + cancelled), 1)) AS success_pct,
               round(w[1]) AS wait_p50_ms, round(w[2]) AS wait_p95_ms, round(w[3]) AS wait_p99_ms
        FROM (
            SELECT queue, countMergeIf(events, status = 'started') AS started,
                   countMergeIf(events, status = 'completed') AS completed,
                   countMergeIf(events, status = 'failed') AS failed,
                   countMergeIf(events, status = 'cancelled') AS cancelled,
                   quantilesMergeIf(0.5, 0.95, 0.99)(queue_wait_ms_quantiles, status = 'started') AS w
            FROM {db}.task_events_1m
            WHERE minute >= toStartOfMinute(now('UTC')) - INTERVAL {int(minutes) - 1} MINUTE
            GROUP BY queue)
        ORDER BY queue""")


def recommendations(run: Run, db: str, limit: int = 50) -> list[dict[str, Any]]:
    """The latest day's model recommendations, largest monthly saving first; none while the table
    does not exist."""
    exists = rows(run, f"SELECT count() AS n FROM system.tables "
                       f"WHERE database = '{db}' AND name = '{RECOMMENDATIONS_TABLE}'")[0]["n"]
    if not exists:
        return []
    return rows(run, f"""
        SELECT toString(day) AS recommended_on, tenant_id, agent_type, queue, current_provider, current_model,
               current_quality, current_cost_per_success_usd, recommended_provider, recommended_model,
               recommended_quality, recommended_cost_per_success_usd, monthly_saving_usd, successful_tasks
        FROM {db}.{RECOMMENDATIONS_TABLE}
        WHERE day = (SELECT max(day) FROM {db}.{RECOMMENDATIONS_TABLE})
        ORDER BY monthly_saving_usd DESC, tenant_id, agent_type, queue LIMIT {int(limit)}""")


def consumer_lag(settings: Settings) -> list[dict[str, Any]]:
    """Consumer lag per group and topic (the sum over its partitions), from the broker, as
    ``ezstream status`` shows it."""
    from streams.operator_status import lag

    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for row in lag(settings, timeout_s=KAFKA_TIMEOUT_S):
        entry = totals.setdefault((row["group"], row["topic"]), {
            "group": row["group"], "topic": row["topic"], "lag": 0, "partitions": 0})
        entry["lag"] += row["lag"]
        entry["partitions"] += 1
    return [totals[key] for key in sorted(totals)]


def dlq_sizes(settings: Settings) -> list[dict[str, Any]]:
    """Messages held by each DLQ topic, as ``ezstream status`` shows them."""
    from streams.operator_status import dlq_sizes as sizes

    return [{"topic": topic, "messages": n} for topic, n in sorted(sizes(settings, timeout_s=KAFKA_TIMEOUT_S).items())]


def _spend_keys(by: str) -> tuple[str, ...]:
    try:
        return SPEND_KEYS[by]
    except KeyError:
        raise ValueError(f"spend is broken down by {', '.join(SPEND_KEYS)}, not {by!r}") from None
