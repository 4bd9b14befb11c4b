"""Event time across partitions: the catch-up merge releases a backlog in one order whatever the
fetches were; the watermarks' minimum skips idle partitions; lateness is a partition's own."""

from __future__ import annotations

import random
import time
from collections import namedtuple

import numpy as np
import pyarrow as pa

from streams.intelligence.merge import CatchUpMerge, Watermarks
from streams.intelligence.windows import Arrival, WindowStore

Row = namedtuple("Row", "event_time name")
SEED = 20261204


def backlog(rng: random.Random, partitions: int = 4, per: int = 200) -> dict[tuple[str, int], list[Row]]:
    """Per partition, calls in roughly time order (a call may be up to 3 s behind the one before;
    times in steps of 500 ms, so calls of several partitions share one)."""
    out = {}
    for p in range(partitions):
        t = rng.randrange(0, 60_000)
        rows = []
        for i in range(per):
            t += rng.randrange(0, 2_000)
            rows.append(Row((t - rng.randrange(0, 3_000)) // 500 * 500, f"p{p}-{i}"))  # ties too
        out[("calls", p)] = rows
    return out


def fetch(merge: CatchUpMerge, tp, end: int, calls: list[tuple[int, Row]]) -> None:
    """``merge.fetched`` of (offset, row) pairs, as the role hands them over: a decoded table."""
    at = np.array([row.event_time for _, row in calls], np.int64)
    table = pa.table({"event_time": pa.array(at, pa.int64()), "name": [row.name for _, row in calls]})
    merge.fetched(tp, end, np.array([offset for offset, _ in calls], np.int64), table, at)


def runs(released) -> list[list[str]]:
    """What a release handed over, as runs of one partition's call names."""
    if released is None:
        return []
    calls, which, _ = released
    names = calls.column("name").to_pylist()
    out: list[list[str]] = []
    for i, name in enumerate(names):
        if i and which[i] == which[i - 1]:
            out[-1].append(name)
        else:
            out.append([name])
    return out


def replay(rows: dict, rng: random.Random) -> list[str]:
    """Feed ``rows`` to a merge in fetches of random runs of random partitions; what it released."""
    merge = CatchUpMerge({tp: len(r) for tp, r in rows.items()}, {tp: 0 for tp in rows})
    left = {tp: 0 for tp in rows}
    out: list[str] = []
    while any(left[tp] < len(r) for tp, r in rows.items()):
        for _ in range(rng.randrange(1, 4)):  # a fetch: runs of a few partitions
            tp = rng.choice([tp for tp in rows if left[tp] < len(rows[tp])] or [None])
            if tp is None:
                break
            end = min(left[tp] + rng.randrange(1, 120), len(rows[tp]))
            fetch(merge, tp, end, [(offset, rows[tp][offset]) for offset in range(left[tp], end)])
            left[tp] = end
        out += [name for run in runs(merge.release()) for name in run]
    assert merge.done()
    return out


def k_way(rows: dict) -> list[str]:
    """The definition: repeatedly the partition whose next call has the least (event time, partition)."""
    at = {tp: 0 for tp in rows}
    out = []
    while live := [tp for tp in rows if at[tp] < len(rows[tp])]:
        tp = min(live, key=lambda tp: (rows[tp][at[tp]].event_time, tp))
        out.append(rows[tp][at[tp]].name)
        at[tp] += 1
    return out


def test_the_merge_releases_a_backlog_in_one_order_whatever_the_fetches():
    print("seed", SEED)
    rng = random.Random(SEED)
    for _ in range(20):
        rows = backlog(rng)
        orders = {tuple(replay(rows, random.Random(rng.random()))) for _ in range(5)}
        assert len(orders) == 1
        (order,) = orders
        assert list(order) == k_way(rows)
        assert sorted(order) == sorted(r.name for r in sum(rows.values(), []))  # each once
        # Each partition's calls in their own order.
        for tp, partition_rows in rows.items():
            assert [n for n in order if n.startswith(f"p{tp[1]}-")] == [r.name for r in partition_rows]


def test_a_partition_with_backlog_and_nothing_fetched_holds_the_release():
    a, b = ("calls", 0), ("calls", 1)
    merge = CatchUpMerge({a: 2, b: 1}, {a: 0, b: 0})
    fetch(merge, a, 2, [(0, Row(500, "a0")), (1, Row(700, "a1"))])
    assert merge.release() is None  # b has backlog and nothing fetched
    assert merge.position(a, 2) == 0 and merge.position(b, 0) == 0  # a restart reads a again
    fetch(merge, b, 1, [(0, Row(600, "b0"))])
    assert runs(merge.release()) == [["a0"], ["b0"], ["a1"]]
    assert merge.done() and merge.position(a, 2) == 2
    assert merge.skew_ms == 100  # b's call came 100 ms behind what a had already handed over


def test_a_partition_that_fetches_nothing_stops_holding_the_release_after_the_stall_time():
    a, b = ("calls", 0), ("calls", 1)
    merge = CatchUpMerge({a: 1, b: 5}, {a: 0, b: 0}, stall_s=0.05)
    fetch(merge, a, 1, [(0, Row(1, "a0"))])
    assert merge.release() is None
    deadline = time.monotonic() + 5
    released = []
    while not released and time.monotonic() < deadline:
        released = [name for run in runs(merge.release()) for name in run]
    assert released == ["a0"] and merge.done()


def test_the_minimum_watermark_skips_partitions_idle_past_the_idle_time():
    marks = Watermarks(idle_s=60)
    now = time.monotonic()
    marks.of.update({("calls", 0): 1_000, ("calls", 1): 5_000})
    marks.heard(("calls", 0), now)
    marks.heard(("calls", 1), now)
    assert marks.low() == 1_000 and marks.skew() == 4_000
    marks.heard(("calls", 0), now - 61)
    assert marks.low() == 5_000 and marks.skew() == 0
    assert marks.low(holding={("calls", 0)}) == 1_000  # still catching up: it counts
    marks.heard(("calls", 1), now - 61)
    assert marks.low() is None


def test_a_call_is_late_by_its_own_partitions_watermark_not_the_others():
    store = WindowStore(size_ms=60_000, grace_ms=10_000)
    call = type("Call", (), dict(event_time=30_000, tenant_id="t", agent_id="a", provider="p", model="m",
                                 agent_type="dev", trace_id="tr", status="ok", input_tokens=1, output_tokens=1,
                                 cost_usd=0.1, latency_ms=5.0))
    # Partition B ran minutes ahead; the windows close on the minimum, partition A's 65 s.
    assert store.close_due(65_000) == []
    assert store.add(call, now_ms=0, watermark_ms=65_000) is Arrival.IN_GRACE  # from A: counted
    assert store.add(call, now_ms=0, watermark_ms=600_000) is Arrival.TOO_LATE  # from B: late by B's time
    assert store.watermark_ms == 65_000  # a call moves no watermark: close_due does
    (closed,) = store.close_due(70_000)
    assert closed.calls == 1 and store.late_events == 1
