"""Tumbling LLM-call windows: totals, quantiles, grace, late events, idle close, state round trip."""

from __future__ import annotations

import json
import random

import pytest

from connectors.kafka.events import LlmCall
from streams.intelligence._time import utc
from streams.intelligence.windows import DELTA_FIELDS, Arrival, LatencySketch, WindowAggregate, WindowKey, WindowStore

T0 = 1_795_000_020_000  # a minute boundary (2026-11-18 11:07:00Z)
MIN = 60_000


def call(at_ms: int, **changes) -> LlmCall:
    values = dict(
        event_time=utc(at_ms), agent_id="dev-01", agent_type="development", tenant_id="acme",
        trace_id="tr-1", call_id="c-1", provider="anthropic", model="claude-3-haiku",
        api_key_alias="anthropic-01", input_tokens=100, output_tokens=20, cost_usd=0.25,
        price_version="2026-11-01", latency_ms=100.0, status="ok", cache_hit=False,
    )
    return LlmCall(**{**values, **changes})


def test_window_totals_and_quantiles_per_key():
    store = WindowStore(size_ms=MIN, grace_ms=10_000)
    for i in range(100):
        status = "ok" if i % 10 else ("rate_limited" if i % 20 else "error")
        store.add(call(T0 + i * 100, latency_ms=float(i + 1), status=status), now_ms=T0)
    store.add(call(T0 + 5, model="claude-3-opus", cost_usd=1.5), now_ms=T0)

    assert store.close_due() == []  # the watermark is still inside the first minute
    store.add(call(T0 + MIN + 10_000), now_ms=T0)
    closed = store.close_due()

    assert [(w.model, w.window_start_ms, w.window_end_ms) for w in closed] == [
        ("claude-3-haiku", T0, T0 + MIN),
        ("claude-3-opus", T0, T0 + MIN),
    ]
    haiku = closed[0]
    assert (haiku.calls, haiku.errors, haiku.rate_limited) == (100, 10, 5)
    assert (haiku.input_tokens, haiku.output_tokens) == (10_000, 2_000)
    assert haiku.cost_usd == 25.0
    # Latencies 1..100 ms: DDSketch answers within 1% of the value at that rank.
    assert haiku.latency_p50_ms == pytest.approx(50, rel=0.02)
    assert haiku.latency_p95_ms == pytest.approx(95, rel=0.02)
    assert haiku.latency_p99_ms == pytest.approx(99, rel=0.02)
    assert closed[1].calls == 1 and closed[1].cost_usd == 1.5


def test_late_events_within_grace_update_the_window_later_ones_are_counted_only():
    store = WindowStore(size_ms=MIN, grace_ms=10_000)
    assert store.add(call(T0 + 1_000), now_ms=T0) is Arrival.ON_TIME
    assert store.add(call(T0 + MIN + 5_000), now_ms=T0) is Arrival.ON_TIME
    # The first minute has ended on event time but its grace has not.
    assert store.add(call(T0 + 59_000), now_ms=T0) is Arrival.IN_GRACE
    assert store.close_due() == []

    assert store.add(call(T0 + MIN + 10_000), now_ms=T0) is Arrival.ON_TIME
    (first,) = store.close_due()
    assert first.window_start_ms == T0 and first.calls == 2

    assert store.add(call(T0 + 59_500), now_ms=T0) is Arrival.TOO_LATE
    assert store.late_events == 1
    assert store.close_due(T0 + 10 * MIN)[0].calls == 2  # the second minute; the late call is not in it


def test_an_event_past_its_grace_is_too_late_even_before_close_due_ran():
    store = WindowStore(size_ms=MIN, grace_ms=10_000)
    store.add(call(T0 + 2 * MIN), now_ms=T0)
    assert store.add(call(T0 + 1_000), now_ms=T0) is Arrival.TOO_LATE
    assert store.late_events == 1


def test_idle_stream_closes_by_wall_clock_a_busy_one_does_not():
    store = WindowStore(size_ms=MIN, grace_ms=10_000)
    store.add(call(T0 + 30_000), now_ms=T0 + 30_000)

    # Past the window's end + grace on the wall clock, but a call arrived 5 s ago: busy.
    assert store.close_idle(now_ms=T0 + MIN + 10_000, idle_ms=45_000) == []
    # Idle for 45 s: the window closes although no later event moved the watermark.
    (closed,) = store.close_idle(now_ms=T0 + 75_000, idle_ms=45_000)
    assert closed.window_start_ms == T0 and closed.calls == 1
    # Exactly once: neither timer nor watermark closes it again, and its late events are refused.
    assert store.close_idle(now_ms=T0 + 10 * MIN, idle_ms=45_000) == []
    assert store.close_due(T0 + 10 * MIN) == []
    assert store.add(call(T0 + 40_000), now_ms=T0 + 10 * MIN) is Arrival.TOO_LATE


def test_a_quiet_store_does_not_make_older_events_late():
    # Nothing open: the wall clock has nothing to close, so older events still get their window.
    store = WindowStore(size_ms=MIN, grace_ms=10_000)
    assert store.close_idle(now_ms=T0 + 10 * MIN, idle_ms=1_000) == []
    assert store.add(call(T0 + 5_000), now_ms=T0 + 10 * MIN) is Arrival.ON_TIME
    # Once idle, that window closes on the wall clock; only it, and calls for it are late after.
    (closed,) = store.close_idle(now_ms=T0 + 10 * MIN + 2_000, idle_ms=1_000)
    assert (closed.window_start_ms, closed.calls) == (T0, 1)
    assert store.add(call(T0 + 6_000), now_ms=T0 + 10 * MIN + 3_000) is Arrival.TOO_LATE
    assert store.add(call(T0 + MIN + 1_000), now_ms=T0 + 10 * MIN + 3_000) is Arrival.ON_TIME


def test_idle_close_keeps_the_current_window_open():
    store = WindowStore(size_ms=MIN, grace_ms=10_000)
    store.add(call(T0 + 1_000), now_ms=T0 + 1_000)
    assert store.close_idle(now_ms=T0 + 50_000, idle_ms=30_000) == []
    assert store.add(call(T0 + 55_000), now_ms=T0 + 55_000) is Arrival.ON_TIME


def test_state_round_trip_mid_window_closes_once_with_all_events():
    store = WindowStore(size_ms=MIN, grace_ms=10_000)
    for i in range(50):
        store.add(call(T0 + i * 1_000, latency_ms=float(i * 10)), now_ms=T0)
    store.add(call(T0 + 500, status="error"), now_ms=T0)

    # Through JSON, as a changelog-backed table would store it.
    restored = WindowStore.from_dict(json.loads(json.dumps(store.to_dict())))
    for i in range(50, 60):
        restored.add(call(T0 + i * 1_000, latency_ms=float(i * 10)), now_ms=T0)
    (closed,) = restored.close_due(T0 + MIN + 10_000)

    assert (closed.calls, closed.errors) == (61, 1)
    reference = LatencySketch()
    for latency in [*(float(i * 10) for i in range(60)), 100.0]:
        reference.add(latency)
    assert closed.latency_p50_ms == reference.quantile(0.5)
    assert closed.latency_p99_ms == reference.quantile(0.99)
    assert restored.close_due(T0 + 5 * MIN) == []
    assert WindowStore.from_dict(restored.to_dict()).close_due(T0 + 5 * MIN) == []


def test_sketches_merge_after_a_round_trip_including_zero_latencies():
    minute_a, minute_b, both = LatencySketch(), LatencySketch(), LatencySketch()
    for latency in [0.0, 0.0, 5.0, 40.0, 300.0]:
        minute_a.add(latency)
        both.add(latency)
    for latency in [7.0, 80.0, 2_000.0]:
        minute_b.add(latency)
        both.add(latency)

    merged = LatencySketch.from_dict(json.loads(json.dumps(minute_a.to_dict())))
    merged.merge(LatencySketch.from_dict(minute_b.to_dict()))

    assert merged.count == 8
    for q in (0.0, 0.2, 0.5, 0.9, 1.0):
        assert merged.quantile(q) == both.quantile(q)
    assert LatencySketch().quantile(0.5) is None


def test_closed_windows_roll_up_through_their_sketch():
    store = WindowStore(size_ms=MIN, grace_ms=0)
    store.add(call(T0, latency_ms=10.0), now_ms=T0)
    store.add(call(T0 + MIN, latency_ms=1_000.0), now_ms=T0)
    store.add(call(T0 + MIN + 1, latency_ms=1_000.0), now_ms=T0)
    minutes = store.close_due(T0 + 2 * MIN)

    hour = LatencySketch()
    for minute in minutes:
        hour.merge(LatencySketch.from_dict(minute.latency_sketch))
    assert hour.count == 3
    assert hour.quantile(0.5) == pytest.approx(1_000, rel=0.01)


def test_aggregates_merge_and_round_trip():
    a, b = WindowAggregate(), WindowAggregate()
    a.add(call(T0, latency_ms=10.0))
    b.add(call(T0, status="rate_limited", cost_usd=0.5))
    a.merge(WindowAggregate.from_dict(json.loads(json.dumps(b.to_dict()))))
    assert (a.calls, a.errors, a.rate_limited, a.cost_usd, a.latency.count) == (2, 1, 1, 0.75, 2)


def test_bad_window_settings_are_refused():
    with pytest.raises(ValueError):
        WindowStore(size_ms=0)


def test_a_closed_window_waiting_to_be_produced_survives_a_checkpoint_as_it_was():
    """The alerts role checkpoints closed windows it has not produced yet (asdict, JSON) and
    produces them after a restart from ``ClosedWindow(**saved)``: the same window, sketch included."""
    from dataclasses import asdict

    from streams.intelligence.processor import window_event
    from streams.intelligence.windows import ClosedWindow

    store = WindowStore(size_ms=60_000, grace_ms=0)
    for i, latency in enumerate((120.0, 80.0, 3_000.0)):
        store.add(call(T0 + i * 1000, latency_ms=latency, cost_usd=0.125 * i), now_ms=0)
    (closed,) = store.close_due(T0 + 60_000)
    saved = json.loads(json.dumps([[asdict(closed), "watermark"]]))
    restored = [(ClosedWindow(**window), by) for window, by in saved]
    assert restored == [(closed, "watermark")]
    assert window_event(restored[0][0], "watermark") == window_event(closed, "watermark")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_latencies_added_many_at_once_and_quantiles_read_from_the_bins_equal_ddsketchs_own(seed):
    """The alerts role adds a window's latencies a bin at a time and reads the closed window's
    quantiles from the sparse bins: the same sketch and the same quantiles as one latency at a
    time and DDSketch's walk over every bin, zeros, negatives (counted as 0) and extremes included."""
    import numpy as np

    print("seed", seed)
    rng = random.Random(seed)
    for _ in range(200):
        n = rng.choice([1, 2, 5, 40, 500])
        values = [rng.choice([0.0, -3.0, 5e-324, 1e-300, 1.0, 1e12, rng.lognormvariate(5, 2),
                              rng.uniform(0, 10)]) for _ in range(n)]
        one, many = LatencySketch(), LatencySketch()
        for value in values:
            one.add(value)
        many.add_latencies(np.array(values))
        assert many.to_dict() == one.to_dict()
        qs = (0.0, 0.5, 0.95, 0.99, 1.0)
        assert many.quantiles(qs, many.to_dict()["bins"]) == [one.quantile(q) for q in qs]


def test_a_delta_carries_the_sketch_bins_that_changed_and_rebuilds_the_state_over_a_snapshot():
    """A window's delta holds its totals and, of its latency sketch, the bins added to since the
    last delta only; applied over the snapshot taken before, the deltas give exactly the state."""
    store = WindowStore(size_ms=MIN, grace_ms=10_000)
    for i in range(50):
        store.add(call(T0 + i * 100, latency_ms=float(10 + i)), now_ms=T0)
    store.delta()
    snapshot = json.loads(json.dumps(store.to_dict()))
    store.add(call(T0 + 6_000, latency_ms=12.0), now_ms=T0)  # a bin it had: its count moves
    store.add(call(T0 + 6_100, latency_ms=5_000.0), now_ms=T0)  # a new bin
    store.add(call(T0 + 6_200, latency_ms=0.0), now_ms=T0)  # the zero count
    delta = json.loads(json.dumps(store.delta()))
    (window,) = delta["windows"]
    totals = dict(zip(DELTA_FIELDS, window[5]))
    assert [count for _, count in totals["bins"]] == [2.0, 1.0] and totals["zero_count"] == 1.0
    assert window[:5] == [T0, *WindowKey("acme", "dev-01", "anthropic", "claude-3-haiku")] and totals["calls"] == 53
    WindowStore.apply_delta(snapshot, delta)
    assert snapshot == json.loads(json.dumps(store.to_dict()))
    assert store.delta()["windows"] == []  # nothing changed since
    (closed,) = WindowStore.from_dict(snapshot).close_due(T0 + 2 * MIN)
    assert closed.calls == 53 and LatencySketch.from_dict(closed.latency_sketch).quantile(1.0) == pytest.approx(5_000, rel=0.02)


def test_a_delta_written_before_windows_were_lists_still_restores_the_same_state():
    """A state topic written by the version before this one (a window of a delta as a dict: its
    ``start_ms``, ``key`` and ``totals`` as :meth:`WindowAggregate.to_dict` of the changed bins)
    restores to the same state as the delta of now, a window closed, changed and new included."""
    stores = [WindowStore(size_ms=MIN, grace_ms=10_000) for _ in range(2)]
    for store in stores:
        for i in range(50):
            store.add(call(T0 + i * 100, latency_ms=float(10 + i)), now_ms=T0)
            store.add(call(T0 + MIN + i * 100, agent_id="dev-02", latency_ms=float(i)), now_ms=T0)
        store.delta()
    snapshot = json.dumps(stores[0].to_dict())
    for store in stores:
        store.add(call(T0 + MIN + 6_000, agent_id="dev-02", latency_ms=12.0), now_ms=T0)  # changed
        store.add(call(T0 + MIN + 6_100, agent_id="dev-03", latency_ms=0.0), now_ms=T0)  # new
        assert len(store.close_due(T0 + 2 * MIN + 10_000 - 1)) == 1  # window 0 closes
    old = stores[1]
    windows = [{"start_ms": start, "key": list(key), "totals": None if (agg := old._open.get(start, {}).get(key)) is None
                else agg.to_dict(touched=True)} for start, key in sorted(old._changed)]
    old._changed.clear()
    deltas = {"now": stores[0].delta(), "before": {**old.to_dict(windows=False), "windows": windows}}
    assert [w[5] is None for w in deltas["now"]["windows"]] == [True, False, False]
    for name, delta in deltas.items():
        state = json.loads(snapshot)
        WindowStore.apply_delta(state, json.loads(json.dumps(delta)))
        assert state == json.loads(json.dumps(stores[0].to_dict())), name
