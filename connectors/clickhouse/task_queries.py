"""Named task lifecycle queries over ``task_state`` and ``task_events`` (migration 004).

Each function returns the SQL text of one query, for ``client.query`` or ``ezstream sql``; it runs
nothing. ``db`` is the database holding the tables (``EZ_CLICKHOUSE_DATABASE``). Points in time
are SQL expressions (``now64(3)``, ``now() - INTERVAL 1 DAY``); :func:`sql_timestamp` turns a
``datetime`` into one, which makes a query repeatable. docs/task-analytics.md shows each query
as the SQL it renders to.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from types import MappingProxyType

#: How long a task may run on each queue before it counts as stuck, in seconds: 5 minutes for
#: high_priority, 30 for normal, 2 hours for batch and a day for background work.
DEFAULT_SLA_SECONDS: Mapping[str, int] = MappingProxyType({
    "high_priority": 300,
    "normal": 1_800,
    "batch": 7_200,
    "background": 86_400,
})

# The statuses that end an attempt; a task whose latest event has one of them is finished.
_TERMINAL = "('completed', 'failed', 'cancelled')"


def sql_timestamp(at: datetime) -> str:
    """``at`` as a ClickHouse ``DateTime64(3, 'UTC')`` literal.

    :raises ValueError: ``at`` is naive (no time zone): it would be read as UTC or as local time
        depending on where it runs.
    """
    if at.tzinfo is None:
        raise ValueError(f"sql_timestamp needs an aware datetime, got the naive {at.isoformat()}")
    text = at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"toDateTime64('{text}', 3, 'UTC')"


def stuck_tasks(
    db: str, sla_seconds_by_queue: Mapping[str, float] = DEFAULT_SLA_SECONDS, now_sql: str = "now64(3)"
) -> str:
    """Tasks whose latest attempt started and has been running for longer than its queue's SLA.

    Columns: tenant_id, task_id, queue, agent_id, agent_type, attempts, started_at, running_ms,
    sla_ms; longest running first.

    :param sla_seconds_by_queue: the whole SLA table, queue -> seconds. Tasks on a queue it does
        not name are not checked; to change one queue, pass ``{**DEFAULT_SLA_SECONDS, "normal": 600}``.
    :param now_sql: the moment to measure against, as an SQL expression.
    :raises ValueError: the table is empty or an SLA is not a positive number.
    """
    if not sla_seconds_by_queue:
        raise ValueError("stuck_tasks needs an SLA for at least one queue")
    for queue, seconds in sla_seconds_by_queue.items():
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"SLA of queue {queue!r} must be a positive number of seconds, got {seconds!r}")
    queues = ", ".join(_quote(queue) for queue in sla_seconds_by_queue)
    sla_ms = ", ".join(str(round(seconds * 1000)) for seconds in sla_seconds_by_queue.values())
    return f"""WITH
    {now_sql} AS at,
    transform(queue, [{queues}], [{sla_ms}], 0) AS sla_ms
SELECT tenant_id, task_id, queue, agent_id, agent_type, attempts, started_at,
       dateDiff('millisecond', started_at, at) AS running_ms, sla_ms
FROM {db}.task_state
WHERE status = 'started' AND queue IN ({queues}) AND running_ms > sla_ms
ORDER BY running_ms DESC, tenant_id, task_id"""


def orphaned_tasks(db: str, older_than_s: float, now_sql: str = "now64(3)") -> str:
    """Unfinished tasks that nothing is moving on for ``older_than_s`` seconds.

    Two kinds, named in the ``reason`` column:

    - ``not_started``: queued (first or again) and nothing happened to it since;
    - ``agent_silent``: started, and its agent has sent no event at all (task, LLM call or
      telemetry) since: a worker that died mid-task stops its heartbeat too.

    Columns: tenant_id, task_id, status, queue, agent_id, attempts, last_event_at, reason; oldest
    first.

    :param now_sql: the moment to measure against, as an SQL expression.
    :raises ValueError: ``older_than_s`` is not a positive number.
    """
    if isinstance(older_than_s, bool) or not isinstance(older_than_s, (int, float)) or not older_than_s > 0:
        raise ValueError(f"older_than_s must be a positive number of seconds, got {older_than_s!r}")
    # Agents that showed life lately form a small set; the table scans are cut to the recent
    # parts by the event_time filter (every event table is ordered by (agent_id, event_time)).
    alive = "\n        UNION ALL ".join(
        f"SELECT agent_id FROM {db}.{table} WHERE event_time >= cutoff"
        for table in ("task_events", "llm_calls", "telemetry")
    )
    return f"""WITH
    {now_sql} AS at,
    at - toIntervalMillisecond({round(older_than_s * 1000)}) AS cutoff
SELECT tenant_id, task_id, status, queue, agent_id, attempts, last_event_at,
       if(status = 'queued', 'not_started', 'agent_silent') AS reason
FROM {db}.task_state
WHERE (status = 'queued' AND last_event_at < cutoff)
   OR (status = 'started' AND agent_id NOT IN (
        {alive}))
ORDER BY last_event_at, tenant_id, task_id"""


def queue_wait_percentiles(db: str, since: str) -> str:
    """p50/p95/p99 of the time tasks waited in each queue, over the starts since ``since``.

    Every start counts, retries included: a retried task waits in its queue again. The waits are
    the ``queue_wait_ms`` the started events report. ``quantiles`` interpolates between the
    values, exactly up to 8,192 of them per queue and from a uniform sample beyond.

    Columns: queue, starts, p50_ms, p95_ms, p99_ms; by queue.

    :param since: the start of the period, as an SQL expression.
    """
    return f"""WITH quantiles(0.5, 0.95, 0.99)(queue_wait_ms) AS waits
SELECT queue, count() AS starts, waits[1] AS p50_ms, waits[2] AS p95_ms, waits[3] AS p99_ms
FROM {db}.task_events
WHERE status = 'started' AND event_time >= {since} AND queue_wait_ms IS NOT NULL
GROUP BY queue
ORDER BY queue"""


def cost_per_successful_task(db: str, since: str | None = None) -> str:
    """What a successful task costs, by agent type and queue, over the tasks that are finished.

    ``cost_per_successful_task`` is the cost of every finished task (its retries included, and the
    failed and cancelled tasks too) over the number that completed: what it takes to get one
    task done, the figure to compare models and agents by.

    Columns: agent_type, queue, successful_tasks, unsuccessful_tasks, total_cost_usd,
    cost_per_successful_task (NULL where none completed), avg_quality_score (of the completed
    ones that were evaluated); by agent type and queue.

    :param since: count only the tasks finished since then, an SQL expression; all when None.
    """
    period = "" if since is None else f" AND finished_at >= {since}"
    return f"""SELECT agent_type, queue,
       countIf(status = 'completed') AS successful_tasks,
       countIf(status != 'completed') AS unsuccessful_tasks,
       sum(cost_usd) AS total_cost_usd,
       if(successful_tasks > 0, total_cost_usd / successful_tasks, NULL) AS cost_per_successful_task,
       avgIf(quality_score, status = 'completed') AS avg_quality_score
FROM {db}.task_state
WHERE status IN {_TERMINAL}{period}
GROUP BY agent_type, queue
ORDER BY agent_type, queue"""


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
