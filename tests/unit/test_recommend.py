"""Model recommendations (connectors/batch/recommend.py) on seeded tasks and calls.

The lake is a folder of the test's own, written by the lake sink; ClickHouse an embedded engine in
a folder of the test's own, opened only by child processes (``ezstream recommend`` and a query),
as chDB opens one data folder per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from connectors.batch.recommend import ModelStats, day_inputs, model_stats, read_recommendations, recommend
from connectors.kafka.codec import default_codec, encode
from connectors.kafka.events import LlmCall, TaskEvent
from connectors.lake.sink import LakeSink
from connectors.settings import Settings, load_settings
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, TABLES, OffsetRange, SinkBatch

REPO = Path(__file__).resolve().parents[2]
DAY = date(2026, 11, 20)
NOON = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
SONNET, HAIKU, MIXTRAL, GPT35, GPT4 = (("anthropic", "claude-3-sonnet"), ("anthropic", "claude-3-haiku"),
                                       ("groq", "mixtral-8x7b"), ("openai", "gpt-3.5-turbo"), ("openai", "gpt-4"))


class Seed:
    """Tasks and their calls, built one task at a time, then written to the lake as the sink writes them."""

    def __init__(self) -> None:
        self.tasks: list[TaskEvent] = []
        self.calls: list[LlmCall] = []

    def task(self, task_id: str, tenant: str, agent_type: str, queue: str, status: str, quality: float | None,
             calls: list[tuple[tuple[str, str], float]], at: datetime = NOON, attempt: int = 1) -> None:
        """One attempt of a task that ends at ``at`` with ``status``, after ``calls`` ((provider, model), cost)."""
        common = dict(agent_id=f"{agent_type}-01", agent_type=agent_type, tenant_id=tenant, trace_id=f"trace-{task_id}")
        for i, ((provider, model), cost) in enumerate(calls):
            self.calls.append(LlmCall(
                **common, event_time=at - timedelta(minutes=10 * (len(calls) - i)), call_id=f"{task_id}-{attempt}-{i}",
                task_id=task_id, provider=provider, model=model, api_key_alias="key-01", input_tokens=100,
                output_tokens=10, cost_usd=cost, price_version="test", latency_ms=10.0, status="ok", cache_hit=False))
        self.tasks.append(TaskEvent(**common, event_time=at, task_id=task_id, status=status, queue=queue,
                                    attempt=attempt, quality_score=quality, cost_usd=sum(c for _, c in calls),
                                    price_version="test"))

    def write(self, settings: Settings) -> None:
        sink = LakeSink(settings, "seed")
        sink.setup()
        for topic, events in (("agent.tasks", self.tasks), ("agent.llm_calls", self.calls)):
            name = events[0].EVENT
            decoded = default_codec().decode_batch_arrow([encode(name, e.to_record()) for e in events], name)
            assert not decoded.failures, decoded.failures
            n = decoded.table.num_rows
            rows = decoded.table.append_column(PARTITION_COLUMN, pa.array([0] * n, pa.int32()))
            rows = rows.append_column(OFFSET_COLUMN, pa.array(range(n), pa.int64()))
            sink.write(SinkBatch(TABLES[topic], name, rows, (OffsetRange("seed." + topic, 0, 0, n - 1),)))


def seeded() -> tuple[Seed, float]:
    """Two groups. tenant-1/research/normal: claude-3-sonnet is used most (30 tasks, 25 completed,
    quality 0.80); claude-3-haiku has the same quality at a tenth of the cost; mixtral is cheaper
    still but 0.2 worse; gpt-3.5 is better and cheaper but has too few successes to count.
    tenant-2/enterprise/high_priority: gpt-4 is used most, and the cheaper sonnet is too far below
    it in quality. Returns the seed and the monthly saving expected for the first group."""
    seed = Seed()
    group = ("tenant-1", "research", "normal")
    for i in range(30):
        status = "completed" if i < 25 else "failed"
        # One task started the evening before: its first call is on the day before.
        at = NOON if i else datetime(2026, 11, 20, 0, 5, tzinfo=timezone.utc)
        seed.task(f"s{i}", *group, status, 0.80 if status == "completed" else None, [(SONNET, 0.01), (SONNET, 0.01)], at)
    for i in range(22):
        # A task's small call to another model does not move it: it belongs to haiku, which took most of its cost.
        seed.task(f"h{i}", *group, "completed", 0.80 if i < 20 else None, [(HAIKU, 0.002), (SONNET, 0.0001)])
    for i in range(25):
        seed.task(f"m{i}", *group, "completed", 0.60, [(MIXTRAL, 0.0005)])
    for i in range(5):
        seed.task(f"g{i}", *group, "completed", 0.95, [(GPT35, 0.0001)])
    # A retried task counts once, by its latest attempt: failed, then completed.
    seed.task("h-retried", *group, "failed", None, [(HAIKU, 0.002)], NOON - timedelta(hours=1), attempt=1)
    seed.task("h-retried", *group, "completed", 0.80, [(HAIKU, 0.002)], NOON, attempt=2)
    # Not the day's: finished the day before, and a task still running.
    seed.task("old", *group, "completed", 0.99, [(GPT35, 0.00001)] * 3, NOON - timedelta(days=1))
    seed.task("running", *group, "started", None, [(GPT35, 0.00001)])
    other = ("tenant-2", "enterprise", "high_priority")
    for i in range(30):
        seed.task(f"e{i}", *other, "completed", 0.90, [(GPT4, 0.05)])
    for i in range(25):
        seed.task(f"f{i}", *other, "completed", 0.85, [(SONNET, 0.01)])

    # Worked out by hand from the lines above: sonnet's 30 tasks cost 0.02 each over 25 successes;
    # haiku's 22 tasks 0.0021 each and the retried one 0.004, over 23 successes.
    sonnet_per_success = 30 * 0.02 / 25
    haiku_per_success = (22 * 0.0021 + 0.004) / 23
    return seed, 25 * 30 * (sonnet_per_success - haiku_per_success)


@pytest.fixture
def lake(tmp_path) -> Settings:
    settings = load_settings(home=tmp_path / "home", lake_uri=f"file://{tmp_path / 'lake'}",
                             clickhouse_dsn=f"chdb://{tmp_path / 'clickhouse'}", clickhouse_database="ez_recommend")
    return settings


def env(settings: Settings, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EZ_")}
    return {**base, "EZ_HOME": str(settings.home), "EZ_LAKE_URI": settings.lake_uri,
            "EZ_CLICKHOUSE_DSN": settings.clickhouse_dsn.get_secret_value(),
            "EZ_CLICKHOUSE_DATABASE": settings.clickhouse_database, "PYTHONPATH": str(REPO), **extra}


def ezstream_recommend(settings: Settings, day: date, **extra: str) -> list[dict]:
    """``ezstream recommend --day DAY --format json`` in a process of its own; its rows."""
    done = subprocess.run([sys.executable, "-m", "streams.cli", "recommend", "--day", day.isoformat(), "--format", "json"],
                          env=env(settings, **extra), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    return json.loads(done.stdout)


def clickhouse_rows(settings: Settings) -> list[dict]:
    script = ("import json; from connectors.clickhouse import get_client; from connectors.settings import load_settings\n"
              "s = load_settings(); r = get_client(s).query(f'SELECT * FROM {s.clickhouse_database}.model_recommendations "
              "ORDER BY day, tenant_id, agent_type, queue')\n"
              "print(json.dumps([dict(zip(r.column_names, row)) for row in r.result_rows], default=str))")
    done = subprocess.run([sys.executable, "-c", script], env=env(settings), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cheaper_model_of_equal_quality_is_recommended_with_its_saving(lake):
    seed, saving = seeded()
    seed.write(lake)

    [row] = ezstream_recommend(lake, DAY)

    assert {k: row[k] for k in ("tenant_id", "agent_type", "queue", "current_provider", "current_model",
                                "recommended_provider", "recommended_model", "successful_tasks")} == {
        "tenant_id": "tenant-1", "agent_type": "research", "queue": "normal",
        "current_provider": "anthropic", "current_model": "claude-3-sonnet",
        "recommended_provider": "anthropic", "recommended_model": "claude-3-haiku", "successful_tasks": 25}
    assert row["current_quality"] == pytest.approx(0.80) and row["recommended_quality"] == pytest.approx(0.80)
    assert row["current_cost_per_success_usd"] == pytest.approx(0.024)
    assert row["monthly_saving_usd"] == pytest.approx(saving)

    # The same row in ClickHouse, in the columns the dashboard reads.
    [stored] = clickhouse_rows(lake)
    assert list(stored) == ["day", "tenant_id", "agent_type", "queue", "current_provider", "current_model",
                            "current_quality", "current_cost_per_success_usd", "recommended_provider",
                            "recommended_model", "recommended_quality", "recommended_cost_per_success_usd",
                            "monthly_saving_usd", "successful_tasks", "computed_at"]
    assert stored["day"] == DAY.isoformat() and stored["recommended_model"] == "claude-3-haiku"
    assert stored["monthly_saving_usd"] == pytest.approx(saving) and stored["successful_tasks"] == 25
    [lake_row] = read_recommendations(lake, DAY).to_pylist()
    assert lake_row["monthly_saving_usd"] == pytest.approx(saving)
    at = datetime.fromisoformat(stored["computed_at"])
    assert lake_row["computed_at"] == (at if at.tzinfo else at.replace(tzinfo=timezone.utc))


def test_a_rerun_replaces_the_day_and_leaves_other_days(lake):
    seed, _ = seeded()
    seed.write(lake)
    assert len(ezstream_recommend(lake, DAY - timedelta(days=1), EZ_RECOMMEND_MIN_SUCCESSFUL_TASKS="1")) == 0
    ezstream_recommend(lake, DAY)
    ezstream_recommend(lake, DAY)
    assert [r["day"] for r in clickhouse_rows(lake)] == [DAY.isoformat()]
    assert read_recommendations(lake, DAY).num_rows == 1

    # A stricter setting: gpt-3.5 counts now with its 5 successes (better and cheaper than haiku).
    [row] = ezstream_recommend(lake, DAY, EZ_RECOMMEND_MIN_SUCCESSFUL_TASKS="5")
    assert row["recommended_model"] == "gpt-3.5-turbo"
    assert [r["recommended_model"] for r in clickhouse_rows(lake)] == ["gpt-3.5-turbo"]
    assert read_recommendations(lake, DAY)["recommended_model"].to_pylist() == ["gpt-3.5-turbo"]

    # Nothing qualifies any more: the day's row goes from both stores.
    assert ezstream_recommend(lake, DAY, EZ_RECOMMEND_MIN_SUCCESSFUL_TASKS="26") == []
    assert clickhouse_rows(lake) == []
    assert read_recommendations(lake, DAY).num_rows == 0
    assert read_recommendations(lake, DAY + timedelta(days=1)) is None


def test_model_stats_attribute_each_task_to_the_model_with_most_of_its_cost(lake):
    seed, _ = seeded()
    seed.write(lake)
    stats = {(m.provider, m.model): m for m in model_stats(*day_inputs(lake, DAY))[("tenant-1", "research", "normal")]}
    assert sorted(stats) == sorted([SONNET, HAIKU, MIXTRAL, GPT35])
    assert (stats[SONNET].tasks, stats[SONNET].successful_tasks) == (30, 25)
    assert stats[SONNET].cost_usd == pytest.approx(0.6)  # the call of the day before included
    assert (stats[HAIKU].tasks, stats[HAIKU].successful_tasks) == (23, 23)
    assert stats[HAIKU].cost_usd == pytest.approx(22 * 0.0021 + 0.004)
    assert stats[HAIKU].quality == pytest.approx(0.80)  # the 2 tasks without a score are left out of it
    assert stats[GPT35].tasks == 5  # neither the day before's task nor the running one


def test_nothing_is_recommended_without_a_cheaper_model_close_enough_in_quality():
    def stats(provider: str, model: str, ok: int, cost: float, quality: float | None, tasks: int | None = None):
        return ModelStats(provider, model, tasks or ok, ok, cost, quality)

    current = stats("openai", "gpt-4", 30, 1.5, 0.90, tasks=40)  # the most used: the current model
    assert recommend([current, stats("anthropic", "claude-3-sonnet", 30, 0.3, 0.87)], 0.02, 20) is None
    assert recommend([current, stats("anthropic", "claude-3-sonnet", 30, 0.3, 0.88)], 0.02, 20) is not None
    # Cheaper and as good, but too few successes; or not cheaper per success.
    assert recommend([current, stats("anthropic", "claude-3-sonnet", 19, 0.1, 0.95)], 0.02, 20) is None
    assert recommend([current, stats("anthropic", "claude-3-sonnet", 25, 1.5, 0.95)], 0.02, 20) is None
    # The current model without enough successes (or without a score): nothing to compare with.
    assert recommend([stats("openai", "gpt-4", 10, 1.0, 0.9, tasks=40),
                      stats("anthropic", "claude-3-haiku", 30, 0.1, 0.9)], 0.02, 20) is None
    assert recommend([stats("openai", "gpt-4", 30, 1.0, None, tasks=40),
                      stats("anthropic", "claude-3-haiku", 30, 0.1, 0.9)], 0.02, 20) is None
    # The cheapest of those that qualify.
    current, best = recommend([current, stats("anthropic", "claude-3-sonnet", 30, 0.3, 0.89),
                               stats("anthropic", "claude-3-haiku", 30, 0.06, 0.885),
                               stats("groq", "mixtral-8x7b", 30, 0.01, 0.70)], 0.02, 20)
    assert (best.stats.model, best.cost_per_success) == ("claude-3-haiku", pytest.approx(0.002))
