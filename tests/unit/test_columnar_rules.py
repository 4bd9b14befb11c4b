"""The rules fed a batch of calls as columns (:meth:`Rules.observe_calls`) against the reference,
one call at a time (:meth:`Rules.observe_call`): the same alerts in the same order, and the same
state, bit for bit, after every batch."""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from connectors.kafka.codec import default_codec
from connectors.kafka.events import LlmCall
from connectors.kafka.native import NativeCodec
from streams.intelligence.alerts import (BudgetConfig, Budgets, ErrorRateConfig, RateLimitStormConfig,
                                         SilentAgentConfig, StuckTaskConfig)
from streams.intelligence.batch import Batch, rows
from streams.intelligence.config import IntelligenceConfig, WindowConfig
from streams.intelligence.processor import Rules
from streams.simulate import generate

T0 = datetime(2026, 11, 30, 23, 40, tzinfo=timezone.utc)  # a day ends within the run
_native = NativeCodec()
_codec = default_codec()


def hostile_calls(rng: random.Random, n: int) -> list[LlmCall]:
    """The simulator's calls with what the rules must get right at a batch's edges: bursts of
    failures and rate limits (alerts fire and resolve), late and very old calls, calls from before
    1970, zero, tiny and huge latencies, costs that cross budgets, ties on window edges."""
    calls = [e for e in generate(rng.randrange(1 << 30), start_time=T0, count=n * 3, rate=40)
             if isinstance(e, LlmCall)][:n]
    burst = rng.randrange(n // 4, n // 2)
    out = []
    for i, call in enumerate(calls):
        change: dict = {}
        if burst <= i < burst + n // 5:
            change["status"] = rng.choice(["rate_limited", "error", "timeout", "ok"])
        roll = rng.random()
        if roll < 0.03:
            change["event_time"] = call.event_time - timedelta(minutes=rng.choice([1, 2, 5, 30, 60 * 30]))
        elif roll < 0.035:
            change["event_time"] = datetime(1, 1, 1, tzinfo=timezone.utc) + timedelta(days=rng.randrange(0, 700_000))  # never ahead: the role drops those first
        elif roll < 0.04:
            change["event_time"] = call.event_time.replace(second=0, microsecond=0)  # a window's edge
        roll = rng.random()
        if roll < 0.05:
            change["latency_ms"] = rng.choice([0.0, 1e-310, 5e-324, 1e-6, 1e12, 2 ** 0.5])
        elif roll < 0.1:
            change["cost_usd"] = rng.choice([0.0, 0.1, 1.0, 3.0, 1e-9])
        out.append(replace(call, **change) if change else call)
    return out


TASK_RULES = IntelligenceConfig(
    silent_agent=SilentAgentConfig(silent_after_ms=20_000, forget_after_ms=600_000),
    stuck_task=StuckTaskConfig(sla_s={"normal": 30, "high_priority": 10, "batch": 60, "background": 60},
                               forget_after_ms=900_000))


def hostile_tasks(rng: random.Random, count: int) -> list:
    """The task events and telemetry of ``count`` simulated events, some redelivered, some
    reordered (minutes back), some tasks started again (the same or the next attempt)."""
    events = [e for e in generate(rng.randrange(1 << 30), start_time=T0, count=count, rate=20)
              if e.EVENT in ("task_event", "telemetry")]
    hostile = []
    for event in events:
        hostile.append(event)
        roll = rng.random()
        if roll < 0.05:
            hostile.append(event)  # redelivered
        elif roll < 0.08:
            hostile.append(replace(event, event_time=event.event_time - timedelta(seconds=rng.randrange(1, 300))))
        elif roll < 0.1 and event.EVENT == "task_event":
            hostile.append(replace(event, status="started", attempt=event.attempt + rng.choice([0, 1])))
    return hostile


def call_rules(rng: random.Random) -> IntelligenceConfig:
    """Rule settings for ``hostile_calls``: thresholds low enough that every call rule fires."""
    return IntelligenceConfig(
        budget=BudgetConfig(Budgets(tenant_daily_usd=rng.choice([5.0, 20.0]), agent_daily_usd=rng.choice([0.2, 0.5])),
                            forecast_window_ms=120_000, forecast_min_elapsed_ms=0),
        error_rate=ErrorRateConfig(window_ms=60_000, bucket_ms=10_000, min_calls=rng.choice([5, 20])),
        rate_limit_storm=RateLimitStormConfig(fire_count=rng.choice([3, 5, 8]), resolve_count=1),
        windows=WindowConfig(size_ms=60_000, grace_ms=rng.choice([0, 5_000]), idle_ms=10_000))


def call_fetches(rng: random.Random, calls: list[LlmCall]):
    """The calls over three partitions, cut in fetches of random sizes, each fetch in runs of one
    partition's calls: (first, end, the fetch as a decoded table, each call's watermark (its
    partition's event time before it), the partitions' watermarks after the fetch) each."""
    table = decoded(calls)
    partition = np.array([rng.randrange(3) for _ in calls])
    watermarks: dict[int, int] = {}
    begin = 0
    while begin < len(calls):
        end = min(len(calls), begin + rng.choice([1, 2, 7, 50, 300, 1000]))
        order = np.argsort(partition[begin:end], kind="stable") + begin
        batch = table.take(order)
        marks = np.empty(len(order), np.int64)
        for j, (row, p) in enumerate(zip(rows("llm_call", batch), partition[order].tolist())):
            marks[j] = watermarks.get(p, 0)
            watermarks[p] = max(int(marks[j]), row.event_time)
        yield begin, end, batch, marks, watermarks
        begin = end


def task_fetches(rng: random.Random, events: list):
    """``events`` cut in fetches of random sizes: (first, end, [(schema, the fetch's events of it
    as one decoded table)]) each."""
    begin = 0
    while begin < len(events):
        end = min(len(events), begin + rng.choice([1, 3, 40, 200, 800]))
        tables = []
        for name in ("task_event", "telemetry"):
            mine = [e for e in events[begin:end] if e.EVENT == name]
            if mine:
                tables.append((name, _native.decode_batch_arrow([_codec.encode(name, e.to_record()) for e in mine], name).table))
        yield begin, end, tables
        begin = end


def decoded(calls: list[LlmCall]):
    batch = _native.decode_batch_arrow([_codec.encode("llm_call", c.to_record()) for c in calls], "llm_call")
    assert not batch.failures
    return batch.table


def state(rules: Rules) -> str:
    return json.dumps(rules.to_dict(), sort_keys=True)


@pytest.mark.parametrize("seed", [int(os.environ["EZ_TEST_SEED"])] if "EZ_TEST_SEED" in os.environ else [1, 2, 3, 4, 5])
def test_a_batch_as_columns_gives_exactly_the_alerts_and_state_of_one_call_at_a_time(seed):
    print("seed", seed, "(EZ_TEST_SEED to repeat)")
    rng = random.Random(seed)
    config = call_rules(rng)
    calls = hostile_calls(rng, 6_000)
    reference, columnar = Rules(config), Rules(config)
    columnar.rows_up_to = 0  # in columns, however small the batch (live fetches go as rows)
    now_ms = int((T0 + timedelta(hours=1)).timestamp() * 1000)
    kinds: set[str] = set()
    for begin, end, batch, marks, watermarks in call_fetches(rng, calls):
        expected = [alert for row, mark in zip(rows("llm_call", batch), marks.tolist())
                    for alert in reference.observe_call(row, now_ms, mark)]
        got = columnar.observe_calls(Batch(batch, marks), now_ms)
        assert [a.to_record() for a in got] == [a.to_record() for a in expected], f"calls {begin}..{end}"
        kinds |= {a.kind for a in expected}
        low = min(watermarks.values()) - rng.randrange(0, 30_000)
        advanced = reference.advance(low)[0]
        assert [a.to_record() for a in columnar.advance(low)[0]] == [a.to_record() for a in advanced]
        kinds |= {a.kind for a in advanced}
        if rng.random() < 0.1:
            tick = max(watermarks.values()) + rng.randrange(0, 120_000)
            assert columnar.tick(tick) == reference.tick(tick)
        assert state(columnar) == state(reference), f"calls {begin}..{end}"
        assert json.dumps(columnar.delta(), sort_keys=True) == json.dumps(reference.delta(), sort_keys=True)
    assert {"budget", "budget_forecast", "error_rate", "rate_limit_storm"} <= kinds, kinds
    assert reference.windows.late_events and reference.budget.late_events


@pytest.mark.parametrize("seed", [int(os.environ["EZ_TEST_SEED"])] if "EZ_TEST_SEED" in os.environ else [1, 2, 3])
def test_task_events_and_telemetry_as_columns_give_exactly_what_one_at_a_time_does(seed):
    """Stuck tasks and silent agents fed a batch at a time (:meth:`Rules.observe_batch`) against
    one event at a time: redelivered and reordered events, repeated starts and new attempts, ends
    of tasks never seen started; wall-clock ticks between batches fire silences and stuck tasks,
    which later events resolve. The same alerts in the same order, the same state, every batch."""
    print("seed", seed, "(EZ_TEST_SEED to repeat)")
    rng = random.Random(seed)
    config = TASK_RULES
    hostile = hostile_tasks(rng, 20_000)
    reference, columnar = Rules(config), Rules(config)
    columnar.rows_up_to = 0  # in columns, however small the batch (live fetches go as rows)
    kinds: set[str] = set()
    for begin, end, tables in task_fetches(rng, hostile):
        for name, table in tables:
            observe = reference.observer(name)
            expected = [alert for row in rows(name, table) for alert in observe(row, 0)]
            got = columnar.observe_batch(Batch(table, event=name))
            assert [a.to_record() for a in got] == [a.to_record() for a in expected], f"events {begin}..{end}"
            kinds |= {f"{a.kind}.{a.state}" for a in expected}
        tick = int(hostile[end - 1].event_time.timestamp() * 1000) + rng.randrange(0, 90_000)
        assert [a.to_record() for a in columnar.tick(tick)] == [a.to_record() for a in reference.tick(tick)]
        assert state(columnar) == state(reference), f"events {begin}..{end}"
        assert json.dumps(columnar.delta(), sort_keys=True) == json.dumps(reference.delta(), sort_keys=True)
    assert {"silent_agent.resolved", "stuck_task.resolved"} <= kinds, kinds
