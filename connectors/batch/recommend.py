"""Model recommendations: per tenant, agent type and queue, the cheapest model whose quality stays
within a tolerance of the model used now, and what switching to it would save in a month.

Computed for one UTC day ``D`` from the lake's ``task_events`` and ``llm_calls``, joined on
``(tenant_id, task_id)``:

- **The day's tasks** are the tasks with a terminal event (``completed``, ``failed``,
  ``cancelled``) on ``D``. A task with several (a failed attempt, then a retry) counts by its
  latest on ``D`` (by event time, then attempt); it *succeeded* when that event is ``completed``.
  Its tenant, agent type, queue and quality score are that event's. A task retried across
  midnight counts on each day one of its attempts ended.
- **A task's cost** is the ``cost_usd`` of all its LLM calls from the day before ``D`` through
  ``D`` (so a task that started the evening before is whole; calls older than that are not
  counted). Failed and cancelled tasks cost too: they are part of what success costs.
- **Attribution**: a task belongs to one model, the ``(provider, model)`` that took the largest
  part of its cost; a tie (free self-hosted models included) goes to the model it called most,
  then to the first by provider and model name. A task without calls has no model and is left out.
- **Per model** of a (tenant, agent type, queue): its successful tasks; ``cost per success`` =
  the cost of all its tasks / its successful tasks; ``quality`` = the mean ``quality_score`` of
  its successful tasks that were evaluated. A model *counts* when it has at least
  ``EZ_RECOMMEND_MIN_SUCCESSFUL_TASKS`` successful tasks and a quality.
- **The current model** is the one with the most tasks that day (ties: the first by name). If it
  does not count, nothing is recommended for that group.
- **The recommended model** is the counting model with the lowest cost per success below the
  current one's whose quality is at least the current quality − ``EZ_RECOMMEND_QUALITY_TOLERANCE``
  (absolute, on the 0-1 score); ties go to the higher quality, then the name. No such model: no row.
- **Projected monthly saving** = ``successful_tasks`` × 30 × (current − recommended cost per
  success), where ``successful_tasks`` is the day's successful tasks of the current model: the
  day taken as a typical one, 30 days a month, the same tasks succeeding as often at the cost per
  success the recommended model showed that day on the same tenant, agent type and queue.

Written per day to the Delta table ``reports/model_recommendations`` (partition ``day``
replaced) and to ClickHouse ``model_recommendations`` (migration 011: the day's rows deleted,
then the new ones inserted), so a rerun of a day replaces it in both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

import pyarrow as pa

from connectors.batch.lake import RECOMMENDATIONS_TABLE, open_table, read_rows
from connectors.lake import storage_options, table_uri
from connectors.settings import Settings

log = logging.getLogger(__name__)

#: The ClickHouse table (migration 011) and the name of the lake table under ``reports/``.
TABLE = "model_recommendations"
#: Days in the month of the projection.
DAYS_PER_MONTH = 30
_EPSILON = 1e-9
_TASK_COLUMNS = ["tenant_id", "agent_type", "task_id", "status", "queue", "attempt", "quality_score", "event_time"]
_CALL_COLUMNS = ["tenant_id", "task_id", "provider", "model", "cost_usd"]
_TYPES = {
    "tenant_id": pa.string(), "agent_type": pa.string(), "task_id": pa.string(), "status": pa.string(),
    "queue": pa.string(), "attempt": pa.int32(), "quality_score": pa.float64(),
    "event_time": pa.timestamp("us", "UTC"), "provider": pa.string(), "model": pa.string(), "cost_usd": pa.float64(),
}
#: The rows, in the columns of ClickHouse's table (the lake stores ``successful_tasks`` as a
#: signed 64-bit integer: Delta has no unsigned types).
SCHEMA = pa.schema([
    ("day", pa.date32()), ("tenant_id", pa.string()), ("agent_type", pa.string()), ("queue", pa.string()),
    ("current_provider", pa.string()), ("current_model", pa.string()), ("current_quality", pa.float64()),
    ("current_cost_per_success_usd", pa.float64()),
    ("recommended_provider", pa.string()), ("recommended_model", pa.string()), ("recommended_quality", pa.float64()),
    ("recommended_cost_per_success_usd", pa.float64()),
    ("monthly_saving_usd", pa.float64()), ("successful_tasks", pa.int64()),
    ("computed_at", pa.timestamp("ms", "UTC")),
])

# One row per (tenant, agent type, queue, model): the day's tasks attributed to the model.
_MODEL_STATS = """
WITH finished AS (
    SELECT tenant_id, task_id, agent_type, queue, status = 'completed' AS succeeded, quality_score
    FROM tasks
    WHERE status IN ('completed', 'failed', 'cancelled')
    QUALIFY row_number() OVER (PARTITION BY tenant_id, task_id
                               ORDER BY event_time DESC, attempt DESC, status = 'completed' DESC) = 1
),
per_model AS (
    SELECT tenant_id, task_id, provider, model, sum(cost_usd) AS cost, count(*) AS calls
    FROM calls
    WHERE task_id IS NOT NULL
    GROUP BY tenant_id, task_id, provider, model
),
attributed AS (
    SELECT tenant_id, task_id, provider, model, sum(cost) OVER (PARTITION BY tenant_id, task_id) AS task_cost
    FROM per_model
    QUALIFY row_number() OVER (PARTITION BY tenant_id, task_id
                               ORDER BY cost DESC, calls DESC, provider, model) = 1
)
SELECT f.tenant_id, f.agent_type, f.queue, a.provider, a.model,
       count(*) AS tasks,
       count(*) FILTER (WHERE f.succeeded) AS successful_tasks,
       sum(a.task_cost) AS cost_usd,
       avg(f.quality_score) FILTER (WHERE f.succeeded) AS quality
FROM finished AS f JOIN attributed AS a USING (tenant_id, task_id)
GROUP BY f.tenant_id, f.agent_type, f.queue, a.provider, a.model
ORDER BY f.tenant_id, f.agent_type, f.queue, a.provider, a.model
"""


@dataclass(frozen=True)
class ModelStats:
    """One model's day in a (tenant, agent type, queue)."""

    provider: str
    model: str
    tasks: int
    successful_tasks: int
    cost_usd: float
    #: Mean quality score of its evaluated successful tasks; None when none was evaluated.
    quality: float | None


@dataclass(frozen=True)
class Candidate:
    """A model that counts: enough successful tasks and a quality."""

    stats: ModelStats
    quality: float
    cost_per_success: float

    @classmethod
    def of(cls, stats: ModelStats, min_successful_tasks: int) -> Candidate | None:
        """``stats`` as a candidate, or None when it does not count."""
        if stats.successful_tasks < max(min_successful_tasks, 1) or stats.quality is None:
            return None
        return cls(stats, stats.quality, stats.cost_usd / stats.successful_tasks)


@dataclass(frozen=True)
class Recommendations:
    """What a run wrote for its day."""

    day: str
    #: Groups (tenant, agent type, queue) with tasks attributed to a model that day.
    groups: int
    rows: pa.Table

    @property
    def monthly_saving_usd(self) -> float:
        """The projected monthly saving of all the day's recommendations together."""
        return float(sum(self.rows["monthly_saving_usd"].to_pylist()))


def model_stats(tasks: pa.Table, calls: pa.Table) -> dict[tuple[str, str, str], list[ModelStats]]:
    """Per (tenant, agent type, queue), each model's tasks, successes, cost and quality.

    :param tasks: ``task_events`` rows of the day, ``calls``: ``llm_calls`` rows of the day and the
        day before (see :func:`day_inputs`).
    """
    import duckdb

    con = duckdb.connect()
    try:
        con.register("tasks", tasks)
        con.register("calls", calls)
        rows = con.execute(_MODEL_STATS).fetchall()
    finally:
        con.close()
    groups: dict[tuple[str, str, str], list[ModelStats]] = {}
    for tenant, agent_type, queue, provider, model, n, ok, cost, quality in rows:
        groups.setdefault((tenant, agent_type, queue), []).append(
            ModelStats(provider, model, int(n), int(ok), float(cost or 0.0), None if quality is None else float(quality)))
    return groups


def recommend(models: list[ModelStats], tolerance: float, min_successful_tasks: int) -> tuple[Candidate, Candidate] | None:
    """(current, recommended) among one group's models, or None when no cheaper model qualifies."""
    current = Candidate.of(min(models, key=lambda m: (-m.tasks, m.provider, m.model)), min_successful_tasks)
    if current is None:
        return None
    others = (Candidate.of(m, min_successful_tasks) for m in models if m is not current.stats)
    # A quality right at the bound qualifies (0.90 - 0.02 must admit 0.88, which float subtraction misses).
    floor = current.quality - tolerance - _EPSILON
    cheaper = [c for c in others if c is not None and c.quality >= floor and c.cost_per_success < current.cost_per_success]
    if not cheaper:
        return None
    return current, min(cheaper, key=lambda c: (c.cost_per_success, -c.quality, c.stats.provider, c.stats.model))


def recommendation_rows(day: date, groups: dict[tuple[str, str, str], list[ModelStats]], tolerance: float,
                        min_successful_tasks: int, computed_at: datetime) -> pa.Table:
    """The rows of the day's recommendations (:data:`SCHEMA`), one per group that has one."""
    rows = []
    for (tenant, agent_type, queue), models in sorted(groups.items()):
        pick = recommend(models, tolerance, min_successful_tasks)
        if pick is None:
            continue
        current, better = pick
        successes = current.stats.successful_tasks
        saving = successes * DAYS_PER_MONTH * (current.cost_per_success - better.cost_per_success)
        rows.append({
            "day": day, "tenant_id": tenant, "agent_type": agent_type, "queue": queue,
            "current_provider": current.stats.provider, "current_model": current.stats.model,
            "current_quality": current.quality, "current_cost_per_success_usd": current.cost_per_success,
            "recommended_provider": better.stats.provider, "recommended_model": better.stats.model,
            "recommended_quality": better.quality, "recommended_cost_per_success_usd": better.cost_per_success,
            "monthly_saving_usd": saving, "successful_tasks": successes, "computed_at": computed_at,
        })
    return pa.Table.from_pylist(rows, SCHEMA)


def model_recommendations(settings: Settings, day: date, computed_at: datetime | None = None) -> Recommendations:
    """Compute the recommendations of ``day`` (UTC) and write them to the lake and ClickHouse,
    replacing what an earlier run wrote for that day."""
    groups = model_stats(*day_inputs(settings, day))
    # Milliseconds: what ClickHouse's DateTime64(3) keeps, so both stores hold the same value.
    at = (computed_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    at = at.replace(microsecond=at.microsecond // 1000 * 1000)
    rows = recommendation_rows(day, groups, settings.recommend_quality_tolerance,
                               settings.recommend_min_successful_tasks, at)
    _replace_lake_day(settings, rows, day, at)
    _replace_clickhouse_day(settings, rows, day)
    result = Recommendations(day.isoformat(), len(groups), rows)
    log.info("model recommendations %s: %d of %d groups, projected monthly saving $%.2f",
             day, rows.num_rows, len(groups), result.monthly_saving_usd)
    return result


def read_recommendations(settings: Settings, day: date) -> pa.Table | None:
    """The lake's recommendations of ``day`` (no rows: nothing recommended); None when they were
    never computed for it."""
    delta = open_table(settings, RECOMMENDATIONS_TABLE)
    if delta is None or delta.transaction_version(_run_id(day)) is None:
        return None
    return delta.to_pyarrow_table(filters=[("day", "=", day)])


def _run_id(day: date) -> str:
    """The Delta app transaction that marks ``day`` computed: a day with nothing recommended has
    no rows to show that it was."""
    return f"ezstream.{TABLE}.{day.isoformat()}"


def day_inputs(settings: Settings, day: date) -> tuple[pa.Table, pa.Table]:
    """The lake rows :func:`model_stats` needs for ``day``: its task events, and the LLM calls of
    the day and the day before."""
    start = datetime.combine(day, time(), tzinfo=timezone.utc)
    tasks = _read(settings, "task_events", start, start + timedelta(days=1), _TASK_COLUMNS)
    calls = _read(settings, "llm_calls", start - timedelta(days=1), start + timedelta(days=1), _CALL_COLUMNS)
    return tasks, calls


def _read(settings: Settings, table: str, start: datetime, end: datetime, columns: list[str]) -> pa.Table:
    delta = open_table(settings, table)
    if delta is None:
        return pa.table({c: pa.array([], _TYPES[c]) for c in columns})
    return read_rows(delta, start, end, columns)


def _replace_lake_day(settings: Settings, rows: pa.Table, day: date, computed_at: datetime) -> None:
    from deltalake import CommitProperties, Transaction, write_deltalake

    lake_rows = rows.set_column(rows.schema.get_field_index("computed_at"), "computed_at",
                                rows["computed_at"].cast(pa.timestamp("us", "UTC")))
    marker = Transaction(_run_id(day), int(computed_at.timestamp() * 1000))
    write_deltalake(table_uri(settings, RECOMMENDATIONS_TABLE), lake_rows, mode="overwrite", partition_by=["day"],
                    predicate=f"day = '{day.isoformat()}'", storage_options=storage_options(settings),
                    commit_properties=CommitProperties(app_transactions=[marker]))


def _replace_clickhouse_day(settings: Settings, rows: pa.Table, day: date) -> None:
    from connectors.clickhouse import get_client
    from connectors.clickhouse.migrations import apply_migrations, mutation_target
    from connectors.clickhouse.sink import insert_settings

    client = get_client(settings)
    apply_migrations(client, settings)
    client.command(f"ALTER TABLE {mutation_target(settings, TABLE)} DELETE WHERE day = %(day)s",
                   parameters={"day": day}, settings={"mutations_sync": 2})
    if rows.num_rows:
        # The day's rows were just deleted, so this block must go in even where it equals an earlier
        # run's (replicated tables drop a block they saw before, by default).
        client.insert_arrow(TABLE, rows.set_column(rows.schema.get_field_index("successful_tasks"), "successful_tasks",
                                                   rows["successful_tasks"].cast(pa.uint64())),
                            database=settings.clickhouse_database,
                            settings={**insert_settings(settings), "insert_deduplicate": 0})
