"""Task lifecycle analytics on the embedded engine: the task_state view (migration 004) and the
named queries of connectors.clickhouse.task_queries, over crafted lifecycles with exact answers.

Events go in through ClickHouseSink.write as the sink loop hands them over: encoded with the
codec, decoded in one call to an Arrow table, Kafka partition and offset columns appended. Only
ClickHouse is needed, so the Kafka and MinIO of the stack are not started; each test has its own
database in the session's one chDB engine folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from connectors.clickhouse import get_client
from connectors.clickhouse.sink import ClickHouseSink
from connectors.clickhouse.task_queries import (
    DEFAULT_SLA_SECONDS,
    cost_per_successful_task,
    orphaned_tasks,
    queue_wait_percentiles,
    sql_timestamp,
    stuck_tasks,
)
from connectors.kafka.events import TaskEvent, Telemetry
from connectors.settings import Settings, load_settings

from tests.integration.clickhouse_batches import PREFIX, make_batch
# The moment the queries run at. Recent, because rows older than the TTL are dropped on insert.
AT = datetime.now(timezone.utc).replace(second=0, microsecond=0)
NOW_SQL = sql_timestamp(AT)

# task -> (agent_id, agent_type, queue)
TASKS = {
    "ok": ("dev-1", "development", "high_priority"),
    "retried": ("dev-2", "development", "normal"),
    "cancelled": ("dev-1", "development", "high_priority"),
    "broken": ("research-2", "research", "background"),
    "silent": ("enterprise-1", "enterprise", "background"),
    "stuck": ("research-1", "research", "high_priority"),
    "waiting": ("content-1", "content", "normal"),
    "running": ("research-1", "research", "batch"),
    "fresh": ("research-1", "research", "normal"),
}


def at(seconds_before: float) -> datetime:
    return AT - timedelta(seconds=seconds_before)


def step(task: str, status: str, before: float, *, attempt: int = 1, wait_ms: int | None = None,
         duration_ms: int | None = None, cost: float = 0.0, quality: float | None = None) -> TaskEvent:
    """One lifecycle event of ``task``, ``before`` seconds before :data:`AT`."""
    agent_id, agent_type, queue = TASKS[task]
    return TaskEvent(
        event_time=at(before), agent_id=agent_id, agent_type=agent_type, tenant_id="tenant-1",
        trace_id=f"trace-{task}", task_id=task, status=status, queue=queue, attempt=attempt,  # type: ignore[arg-type]
        queue_wait_ms=wait_ms, duration_ms=duration_ms, quality_score=quality, cost_usd=cost,
        price_version="2026-11-01", error_category="tool_error" if status == "failed" else None,
    )


# Up to the retry of "retried": its attempt 1 fails and attempt 2 is queued in the same millisecond.
FIRST = [
    step("ok", "queued", 10_800),
    step("retried", "queued", 10_790),
    step("ok", "started", 10_798, wait_ms=2_000),
    step("retried", "started", 10_785, wait_ms=5_000),
    step("ok", "completed", 10_738, wait_ms=2_000, duration_ms=60_000, cost=0.12, quality=0.9),
    step("retried", "failed", 10_725, wait_ms=5_000, duration_ms=60_000, cost=0.05),
    step("retried", "queued", 10_725, attempt=2),
]
SECOND = [
    step("retried", "started", 10_716, attempt=2, wait_ms=9_000),
    step("cancelled", "queued", 10_700),
    step("cancelled", "started", 10_696, wait_ms=4_000),
    step("cancelled", "cancelled", 10_690, wait_ms=4_000, duration_ms=6_000, cost=0.03),
    step("retried", "completed", 10_656, attempt=2, wait_ms=9_000, duration_ms=60_000, cost=0.07, quality=0.8),
    step("broken", "queued", 9_000),
    step("broken", "started", 8_990, wait_ms=10_000),
    step("broken", "failed", 8_900, wait_ms=10_000, duration_ms=90_000, cost=0.02),
    step("silent", "queued", 7_200),
    step("stuck", "queued", 7_200),
    step("waiting", "queued", 7_200),
    step("stuck", "started", 7_199, wait_ms=1_000),
    step("silent", "started", 7_195, wait_ms=5_000),
    step("running", "queued", 3_630),
    step("running", "started", 3_600, wait_ms=30_000),
    step("fresh", "queued", 60),
]
# research-1 still reports its health; enterprise-1 fell silent with its task.
HEARTBEAT = Telemetry(
    event_time=at(30), agent_id="research-1", agent_type="research", tenant_id="tenant-1", trace_id="trace-hb",
    cpu_percent=35.0, memory_percent=40.0, memory_mb=512.0, response_time_ms=120.0, error_count=0, queue_depth=1,
)

STATE_COLUMNS = (
    "task_id, status, queue, agent_id, agent_type, attempts, queued_at, last_queued_at, started_at, "
    "finished_at, last_event_at, queue_wait_ms, run_ms, cost_usd, quality_score"
)


@pytest.fixture
def ch_settings(stack_overrides, unique) -> Iterator[Settings]:
    """Settings of the test stack's embedded engine with a database of this test's own."""
    mine = load_settings(**{
        **stack_overrides,
        "clickhouse_database": f"t_{unique.replace('-', '_')}",
        "clickhouse_ttl_days": 30,
        "topic_prefix": PREFIX,
    })
    yield mine
    get_client(mine).command(f"DROP DATABASE IF EXISTS {mine.clickhouse_database}")


@pytest.fixture
def sink(ch_settings, unique) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(ch_settings, group=f"g.{unique}")
    sink.setup()
    yield sink
    sink.close()


@pytest.fixture
def lifecycles(sink, ch_settings) -> Settings:
    """Every crafted lifecycle written, the first batch of task events twice as a retry would."""
    first = make_batch(FIRST, partition=0, first=0)
    sink.write(first)
    sink.write(first)
    sink.write(make_batch(SECOND, partition=0, first=len(FIRST)))
    sink.write(make_batch([HEARTBEAT], partition=0, first=0))
    return ch_settings


def rows(settings: Settings, sql: str) -> list[dict[str, Any]]:
    result = get_client(settings).query(sql)
    return [dict(zip(result.column_names, row)) for row in result.result_rows]


def task_state(settings: Settings) -> dict[str, dict[str, Any]]:
    got = rows(settings, f"SELECT {STATE_COLUMNS} FROM {settings.clickhouse_database}.task_state")
    return {row.pop("task_id"): row for row in got}


def utc(value: datetime | None) -> datetime | None:
    """A timestamp read back, as an aware UTC datetime whichever way the driver returns it."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def state(status: str, task: str, *, attempts: int = 1, queued: float | None = None, requeued: float | None = None,
          started: float | None = None, finished: float | None = None, last: float, wait_ms: int | None = None,
          run_ms: int | None = None, cost: float = 0.0, quality: float | None = None) -> dict[str, Any]:
    """The task_state row expected for ``task``; times in seconds before :data:`AT`."""
    agent_id, agent_type, queue = TASKS[task]
    when = {"queued_at": queued, "last_queued_at": requeued if requeued is not None else queued,
            "started_at": started, "finished_at": finished, "last_event_at": last}
    return {
        "status": status, "queue": queue, "agent_id": agent_id, "agent_type": agent_type, "attempts": attempts,
        **{name: None if before is None else at(before) for name, before in when.items()},
        "queue_wait_ms": wait_ms, "run_ms": run_ms, "cost_usd": pytest.approx(cost), "quality_score": quality,
    }


EXPECTED = {
    "ok": state("completed", "ok", queued=10_800, started=10_798, finished=10_738, last=10_738,
                wait_ms=2_000, run_ms=60_000, cost=0.12, quality=0.9),
    "retried": state("completed", "retried", attempts=2, queued=10_790, requeued=10_725, started=10_716,
                     finished=10_656, last=10_656, wait_ms=9_000, run_ms=60_000, cost=0.12, quality=0.8),
    "cancelled": state("cancelled", "cancelled", queued=10_700, started=10_696, finished=10_690, last=10_690,
                       wait_ms=4_000, run_ms=6_000, cost=0.03),
    "broken": state("failed", "broken", queued=9_000, started=8_990, finished=8_900, last=8_900,
                    wait_ms=10_000, run_ms=90_000, cost=0.02),
    "silent": state("started", "silent", queued=7_200, started=7_195, last=7_195, wait_ms=5_000),
    "stuck": state("started", "stuck", queued=7_200, started=7_199, last=7_199, wait_ms=1_000),
    "waiting": state("queued", "waiting", queued=7_200, last=7_200),
    "running": state("started", "running", queued=3_630, started=3_600, last=3_600, wait_ms=30_000),
    "fresh": state("queued", "fresh", queued=60, last=60),
}


def test_task_state_holds_each_task_as_it_stands(lifecycles):
    got = task_state(lifecycles)
    for row in got.values():
        for name in ("queued_at", "last_queued_at", "started_at", "finished_at", "last_event_at"):
            row[name] = utc(row[name])
    assert got == EXPECTED


def test_a_retried_batch_leaves_task_state_unchanged(sink, ch_settings):
    first = make_batch(FIRST, partition=0, first=0)
    sink.write(first)
    before = task_state(ch_settings)
    sink.write(first)  # same rows, same offsets, same token

    assert task_state(ch_settings) == before
    db = ch_settings.clickhouse_database
    assert rows(ch_settings, f"SELECT count() AS n FROM {db}.task_events") == [{"n": len(FIRST)}]
    # Between its attempts: queued again in the millisecond attempt 1 failed, so the requeue is
    # the latest event; its wait and run are not known yet, attempt 1's cost is counted.
    retried = before["retried"]
    assert (retried["status"], retried["attempts"], retried["queue_wait_ms"], retried["run_ms"]) == (
        "queued", 2, None, None
    )
    assert utc(retried["last_queued_at"]) == utc(retried["last_event_at"]) == at(10_725)
    assert retried["finished_at"] is None
    assert retried["cost_usd"] == pytest.approx(0.05)
    assert before["ok"]["cost_usd"] == pytest.approx(0.12)


def test_stuck_tasks_run_longer_than_their_queue_sla(lifecycles):
    db = lifecycles.clickhouse_database
    columns = "task_id, queue, agent_id, running_ms, sla_ms"

    def stuck(sla: dict[str, float] = DEFAULT_SLA_SECONDS) -> list[tuple]:
        got = rows(lifecycles, stuck_tasks(db, sla, now_sql=NOW_SQL))
        return [tuple(row[name] for name in columns.split(", ")) for row in got]

    # "silent" (background, a day) and "running" (batch, 2 hours) are within theirs.
    assert stuck() == [("stuck", "high_priority", "research-1", 7_199_000, 300_000)]
    assert stuck({**DEFAULT_SLA_SECONDS, "batch": 1_800}) == [
        ("stuck", "high_priority", "research-1", 7_199_000, 300_000),
        ("running", "batch", "research-1", 3_600_000, 1_800_000),
    ]
    # Queues the table leaves out are not checked.
    assert stuck({"batch": 1_800}) == [("running", "batch", "research-1", 3_600_000, 1_800_000)]
    assert stuck({"high_priority": 7_200}) == []


def test_stuck_tasks_refuses_a_meaningless_sla():
    with pytest.raises(ValueError, match="normal"):
        stuck_tasks("db", {"normal": 0})
    with pytest.raises(ValueError, match="at least one queue"):
        stuck_tasks("db", {})


def test_orphaned_tasks_wait_unstarted_or_lost_their_agent(lifecycles):
    db = lifecycles.clickhouse_database
    got = rows(lifecycles, orphaned_tasks(db, 1_800, now_sql=NOW_SQL))
    # "stuck" and "running" are slow, not orphaned: research-1 still sends telemetry.
    assert [(row["task_id"], row["status"], row["agent_id"], row["reason"]) for row in got] == [
        ("waiting", "queued", "content-1", "not_started"),
        ("silent", "started", "enterprise-1", "agent_silent"),
    ]
    assert [utc(row["last_event_at"]) for row in got] == [at(7_200), at(7_195)]

    # Over three hours nothing is orphaned yet; within 30 s research-1's heartbeat is too old too.
    assert rows(lifecycles, orphaned_tasks(db, 3 * 3_600, now_sql=NOW_SQL)) == []
    recent = rows(lifecycles, orphaned_tasks(db, 29, now_sql=NOW_SQL))
    assert [(row["task_id"], row["reason"]) for row in recent] == [
        ("waiting", "not_started"), ("stuck", "agent_silent"), ("silent", "agent_silent"),
        ("running", "agent_silent"), ("fresh", "not_started"),
    ]


def test_queue_wait_percentiles_count_every_start(lifecycles):
    db = lifecycles.clickhouse_database

    def waits(since: datetime) -> list[tuple]:
        got = rows(lifecycles, queue_wait_percentiles(db, sql_timestamp(since)))
        return [(r["queue"], r["starts"], r["p50_ms"], r["p95_ms"], r["p99_ms"]) for r in got]

    # Linear interpolation between the sorted waits: high_priority 1, 2, 4 s; normal 5 and 9 s
    # (both attempts of "retried"); background 5 and 10 s; batch 30 s.
    approx = pytest.approx
    assert waits(at(4 * 3_600)) == [
        ("background", 2, approx(7_500), approx(9_750), approx(9_950)),
        ("batch", 1, approx(30_000), approx(30_000), approx(30_000)),
        ("high_priority", 3, approx(2_000), approx(3_800), approx(3_960)),
        ("normal", 2, approx(7_000), approx(8_800), approx(8_960)),
    ]
    assert waits(at(2 * 3_600)) == [
        ("background", 1, approx(5_000), approx(5_000), approx(5_000)),
        ("batch", 1, approx(30_000), approx(30_000), approx(30_000)),
        ("high_priority", 1, approx(1_000), approx(1_000), approx(1_000)),
    ]


def test_cost_per_successful_task_carries_retries_and_failures(lifecycles):
    db = lifecycles.clickhouse_database
    columns = ("agent_type", "queue", "successful_tasks", "unsuccessful_tasks", "total_cost_usd",
               "cost_per_successful_task", "avg_quality_score")

    def costs(since: datetime | None = None) -> list[tuple]:
        sql = cost_per_successful_task(db, None if since is None else sql_timestamp(since))
        return [tuple(row[name] for name in columns) for row in rows(lifecycles, sql)]

    approx = pytest.approx
    # development/high_priority pays for its cancelled task; development/normal for its failed attempt.
    assert costs() == [
        ("development", "high_priority", 1, 1, approx(0.15), approx(0.15), approx(0.9)),
        ("development", "normal", 1, 0, approx(0.12), approx(0.12), approx(0.8)),
        ("research", "background", 0, 1, approx(0.02), None, None),
    ]
    # "ok" finished before then.
    assert costs(at(10_700)) == [
        ("development", "high_priority", 0, 1, approx(0.03), None, None),
        ("development", "normal", 1, 0, approx(0.12), approx(0.12), approx(0.8)),
        ("research", "background", 0, 1, approx(0.02), None, None),
    ]
