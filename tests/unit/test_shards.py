"""Shards of the alerts rules (:mod:`streams.intelligence.shards`) against one processor for all
subjects: every shard is given every event; together they raise exactly the alerts and close
exactly the windows of one ``Rules`` for all, and their states, put together, are its state. Fed
a batch at a time (columns) and one event at a time (the reference), restored from a snapshot
and from deltas on the way."""

from __future__ import annotations

import json
import os
import random
from datetime import timedelta
from typing import Any

import pytest

from streams.intelligence.batch import Batch, rows
from streams.intelligence.config import IntelligenceConfig
from streams.intelligence.processor import Rules
from streams.intelligence.shards import Shard
from tests.unit.test_columnar_rules import T0, TASK_RULES, call_fetches, call_rules, hostile_calls, hostile_tasks, task_fetches

SEEDS = [int(os.environ["EZ_TEST_SEED"])] if "EZ_TEST_SEED" in os.environ else [1, 2, 3]


def merged(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' states (``Rules.to_dict``) as one: subjects united (none in two shards), late
    events added up, clocks and window starts the same in every shard; storms from shard 0."""
    def merge(a: Any, b: Any, key: str = "") -> Any:
        if key == "late_events":
            return a + b
        if key == "windows" and isinstance(a, list):
            return sorted(a + b, key=lambda w: (w["start_ms"], w["key"]))
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a[k], v, k) if k in a else v
            return out
        assert a == b, (key, a, b)
        return a

    first, *rest = (dict(s) for s in states)
    storms = first["rate_limit"]
    for state in rest:
        assert state.pop("rate_limit") == Rules(IntelligenceConfig()).to_dict()["rate_limit"], "storms are shard 0's"
    first.pop("rate_limit")
    out = first
    for state in rest:
        out = merge(out, state)
    return {**out, "rate_limit": storms}


def windows(closed) -> list[str]:
    return sorted(json.dumps(vars(w), sort_keys=True, default=str) for w in closed)


def records(alerts) -> list[dict]:
    return sorted((a.to_record() for a in alerts), key=lambda r: json.dumps(r, sort_keys=True, default=str))


def in_columns(rules: Rules) -> Rules:
    """The rules fed in columns however small the batch (live fetches go as rows)."""
    rules.rows_up_to = 0
    return rules


def restored(rules: Rules, config: IntelligenceConfig, shard: Shard, via: dict[str, Any]) -> Rules:
    """The shard's rules as a new active processor would load them: from a snapshot taken earlier
    plus the deltas since (``via``), which must equal the state in memory."""
    Rules.apply_delta(via, json.loads(json.dumps(rules.delta())))
    assert json.dumps(via, sort_keys=True) == json.dumps(rules.to_dict(), sort_keys=True)
    return in_columns(Rules(config, json.loads(json.dumps(via)), shard))


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("seed", SEEDS)
def test_shards_of_the_call_rules_together_give_exactly_one_processor_s_alerts_windows_and_state(seed, count):
    print("seed", seed, "(EZ_TEST_SEED to repeat)")
    rng = random.Random(seed * 10 + count)
    config = call_rules(rng)
    calls = hostile_calls(rng, 5_000)
    shards = [Shard(i, count) for i in range(count)]
    single = in_columns(Rules(config))
    columnar = [in_columns(Rules(config, shard=s)) for s in shards]
    by_rows = [Rules(config, shard=s) for s in shards]  # the reference path, sharded
    saved = [r.to_dict() for r in columnar]
    now_ms = int((T0 + timedelta(hours=1)).timestamp() * 1000)
    kinds: set[str] = set()
    closed_any = False
    for begin, end, batch, marks, watermarks in call_fetches(rng, calls):
        at = Batch(batch, marks).at
        expected = single.observe_calls(Batch(batch, marks, at), now_ms)
        kinds |= {a.kind for a in expected}
        got = [a for r in columnar for a in r.observe_calls(Batch(batch, marks, at), now_ms)]
        assert records(got) == records(expected), f"calls {begin}..{end}"
        got = [a for r in by_rows for row, mark in zip(rows("llm_call", batch), marks.tolist())
               for a in r.observe_call(row, now_ms, mark)]
        assert records(got) == records(expected), f"calls {begin}..{end}, one at a time"
        low = min(watermarks.values()) - rng.randrange(0, 30_000)
        alerts, closed = single.advance(low)
        for group in (columnar, by_rows):
            done = [r.advance(low) for r in group]
            assert records(a for shard_alerts, _ in done for a in shard_alerts) == records(alerts)
            assert windows(w for _, shard_closed in done for w in shard_closed) == windows(closed)
        closed_any |= bool(closed)
        if rng.random() < 0.15:
            tick = max(watermarks.values()) + rng.randrange(0, 120_000)
            expected = single.tick(tick)
            for group in (columnar, by_rows):
                assert records(a for r in group for a in r.tick(tick)) == records(expected)
            idle = single.windows.close_idle(tick, config.windows.idle_ms)
            for group in (columnar, by_rows):
                assert windows(w for r in group for w in r.windows.close_idle(tick, config.windows.idle_ms)) == windows(idle)
        expected_state = json.dumps(single.to_dict(), sort_keys=True)
        for group in (columnar, by_rows):
            assert json.dumps(merged([r.to_dict() for r in group]), sort_keys=True) == expected_state, f"calls {begin}..{end}"
        if rng.random() < 0.2:  # a takeover: each shard from its snapshot and deltas
            columnar = [restored(r, config, s, via) for r, s, via in zip(columnar, shards, saved)]
            saved = [r.to_dict() for r in columnar]
        else:
            for r, via in zip(columnar, saved):
                Rules.apply_delta(via, r.delta())
    assert {"budget", "error_rate", "rate_limit_storm"} <= kinds, kinds
    assert closed_any and single.windows.late_events and single.budget.late_events
    # Each shard holds its share of the subjects: none is left with all of them.
    assert all(0 < r.size()["windows"] < single.size()["windows"] + 1 for r in columnar)
    assert sum(r.size()["budget"] for r in columnar) == single.size()["budget"]


@pytest.mark.parametrize("seed", SEEDS)
def test_shards_of_the_task_and_telemetry_rules_together_give_exactly_one_processor_s_alerts(seed):
    print("seed", seed, "(EZ_TEST_SEED to repeat)")
    rng = random.Random(seed)
    config = TASK_RULES
    hostile = hostile_tasks(rng, 15_000)
    shards = [Shard(i, 2) for i in range(2)]
    single = in_columns(Rules(config))
    columnar = [in_columns(Rules(config, shard=s)) for s in shards]
    by_rows = [Rules(config, shard=s) for s in shards]
    kinds: set[str] = set()
    for _, end, tables in task_fetches(rng, hostile):
        for name, table in tables:
            expected = single.observe_batch(Batch(table, event=name))
            kinds |= {f"{a.kind}.{a.state}" for a in expected}
            assert records(a for r in columnar for a in r.observe_batch(Batch(table, event=name))) == records(expected)
            assert records(a for r in by_rows for row in rows(name, table) for a in r.observer(name)(row, 0)) == records(expected)
        tick = int(hostile[end - 1].event_time.timestamp() * 1000) + rng.randrange(0, 90_000)
        expected = single.tick(tick)
        kinds |= {f"{a.kind}.{a.state}" for a in expected}
        for group in (columnar, by_rows):
            assert records(a for r in group for a in r.tick(tick)) == records(expected)
            assert json.dumps(merged([r.to_dict() for r in group]), sort_keys=True) == json.dumps(single.to_dict(), sort_keys=True)
    assert {"silent_agent.firing", "silent_agent.resolved", "stuck_task.firing", "stuck_task.resolved"} <= kinds, kinds
    assert all(r.size()["silent_agent"] and r.size()["stuck_task"] for r in columnar)


def test_a_subject_belongs_to_one_shard_whatever_the_process():
    """Shards are chosen by CRC-32, not Python's salted hash: every process agrees."""
    owners = [[Shard(i, 3).owns(subject) for i in range(3)] for subject in ("tenant-acme", "openai/gpt-4o", "", None, "é")]
    assert all(sum(row) == 1 for row in owners)
    assert Shard(0, 3).owns("tenant-acme") == (__import__("zlib").crc32(b"tenant-acme") % 3 == 0)
