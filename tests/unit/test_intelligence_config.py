"""The alerts role's settings file and the state it checkpoints, without services."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from connectors.errors import ConfigError
from connectors.kafka.events import LlmCall
from connectors.settings import load_settings
from streams.intelligence.config import IntelligenceConfig, load_config
from streams.intelligence.processor import Rules, window_event

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)


def settings_with(tmp_path, rules: str | None = None, budgets: str | None = None):
    overrides = {}
    if rules is not None:
        (tmp_path / "rules.toml").write_text(rules)
        overrides["alerts_config_file"] = tmp_path / "rules.toml"
    if budgets is not None:
        (tmp_path / "budgets.toml").write_text(budgets)
        overrides["budgets_file"] = tmp_path / "budgets.toml"
    return load_settings(home=tmp_path, **overrides)


def test_defaults_without_files(tmp_path):
    config = load_config(settings_with(tmp_path))
    assert config.windows.size_ms == 60_000 and config.silent_agent.silent_after_ms == 120_000
    assert config.budget.budgets.daily_usd("tenant", "anyone") is None


def test_file_overrides_in_seconds_and_budgets(tmp_path):
    config = load_config(settings_with(
        tmp_path,
        rules="[windows]\nsize_seconds = 30\nidle_seconds = 5\n[error_rate]\nfire_rate = 0.5\nmin_calls = 3\n"
              "[silent_agent]\nforget_after_seconds = 86400\n"
              "[stuck_task]\nforget_after_seconds = 172800\n[stuck_task.sla_seconds]\nhigh_priority = 60\n",
        budgets="[agent]\ndaily_usd = 2.5\n",
    ))
    assert (config.windows.size_ms, config.windows.idle_ms, config.windows.grace_ms) == (30_000, 5_000, 10_000)
    assert (config.error_rate.fire_rate, config.error_rate.min_calls) == (0.5, 3)
    assert config.stuck_task.sla_ms("high_priority") == 60_000
    assert (config.silent_agent.forget_after_ms, config.stuck_task.forget_after_ms) == (86_400_000, 172_800_000)
    assert config.error_rate.forget_after_ms == 7 * 86_400_000
    assert config.budget.budgets.daily_usd("agent", "dev-01") == 2.5


@pytest.mark.parametrize("rules, named", [
    ("[windows]\nsize_secs = 30\n", "size_secs"),
    ("[silence]\nx = 1\n", "silence"),
    ("[error_rate]\nfire_rate = 0.1\nresolve_rate = 0.3\n", "resolve_rate"),
    ("[error_rate]\nmin_calls = 2.5\n", "error_rate.min_calls"),
    ("[silent_agent]\nsilent_after_seconds = \"soon\"\n", "silent_agent.silent_after_seconds"),
    ("[stuck_task]\nsla = 3\n", "sla"),
    ("[silent_agent]\nsilent_after_seconds = 600\nforget_after_seconds = 300\n",
     r"\[silent_agent\] forget_after_seconds"),
    ("[stuck_task]\nforget_after_seconds = 3600\n", r"\[stuck_task\] forget_after_seconds .*86400"),
    ("[error_rate]\nforget_after_seconds = 30\n", r"\[error_rate\] forget_after_seconds"),
    ("[stuck_task]\nforget_after_seconds = -1\n", "stuck_task.forget_after_seconds"),
    ("not toml at all [", "rules.toml"),
])
def test_a_bad_file_fails_at_start_naming_what_is_wrong(tmp_path, rules, named):
    with pytest.raises(ConfigError, match=named):
        load_config(settings_with(tmp_path, rules=rules))


def call(at: datetime, cost: float, status: str = "ok") -> LlmCall:
    return LlmCall(event_time=at, agent_id="dev-01", agent_type="development", tenant_id="acme", trace_id="t",
                   call_id="c", provider="openai", model="gpt-4o", api_key_alias="openai-01", input_tokens=10,
                   output_tokens=5, cost_usd=cost, price_version="2026-11-01", latency_ms=120.0, status=status,
                   cache_hit=False)


def test_checkpointed_state_round_trips_through_json_without_repeating_alerts(tmp_path):
    config = load_config(settings_with(tmp_path, budgets="[agent]\ndaily_usd = 1.0\n"))
    rules = Rules(config)
    now_ms = int(T0.timestamp() * 1000)
    fired = rules.observe(call(T0, 0.85), now_ms)
    assert [a.threshold for a in fired] == [0.8]
    restored = Rules(config, json.loads(json.dumps(rules.to_dict())))
    # The same spend again would cross 80 % again: the restored rule knows it already fired.
    assert restored.observe(call(T0 + timedelta(seconds=1), 0.0), now_ms) == []
    assert [a.threshold for a in restored.observe(call(T0 + timedelta(seconds=2), 0.1), now_ms)] == [0.9]
    (closed,) = restored.windows.close_due(now_ms + 120_000)
    assert (closed.calls, round(closed.cost_usd, 6)) == (3, 0.95)


def test_window_ids_are_stable_and_distinct():
    rules = Rules(IntelligenceConfig())
    rules.observe(call(T0, 0.1), 0)
    rules.observe(call(T0 + timedelta(minutes=1), 0.1), 0)
    first, second = rules.windows.close_due(int((T0 + timedelta(minutes=5)).timestamp() * 1000))
    assert window_event(first, "watermark").event_id == window_event(first, "idle").event_id
    assert window_event(first, "watermark").event_id != window_event(second, "watermark").event_id
    assert window_event(first, "watermark").window_start == T0


def test_rules_fed_from_the_native_decoders_rows_give_the_same_alerts_and_state_as_from_events():
    """The alerts role feeds its rules rows of the native decoder's tables (no model object per
    event): over simulated traffic with failing and rate-limited bursts and budgets that fire,
    every alert (ids, numbers, texts) and the whole state equal those of the events themselves."""
    from connectors.kafka.codec import default_codec
    from connectors.kafka.native import NativeCodec
    from streams.intelligence.alerts import BudgetConfig, Budgets
    from streams.intelligence.batch import rows
    from streams.simulate import generate

    config = IntelligenceConfig(budget=BudgetConfig(Budgets(tenant_daily_usd=20.0, agent_daily_usd=0.5)))
    codec, native = default_codec(), NativeCodec()
    events = list(generate(5, start_time=T0, count=20_000, rate=200))
    # Bursts of failures and rate limits, so error-rate and storm alerts fire and resolve.
    for i, event in enumerate(events):
        if isinstance(event, LlmCall) and 4_000 <= i < 6_000:
            event.status = "rate_limited" if i % 2 else "error"
    assert {type(e).__name__ for e in events} == {"LlmCall", "TaskEvent", "Telemetry"}
    now_ms = int((T0 + timedelta(days=1)).timestamp() * 1000)
    by_events, by_rows = Rules(config), Rules(config)
    expected, got = [], []
    for start in range(0, len(events), 1000):
        chunk = events[start:start + 1000]
        for event in chunk:
            expected += by_events.observe(event, now_ms)
        for name in ("llm_call", "telemetry", "task_event"):
            mine = [e for e in chunk if e.EVENT == name]
            batch = native.decode_batch_arrow([codec.encode(name, e.to_record()) for e in mine], name)
            assert not batch.failures
            observe = by_rows.observer(name)
            for row in rows(name, batch.table):
                got += observe(row, now_ms)
    assert {a.kind for a in expected} >= {"budget", "error_rate", "rate_limit_storm"}
    key = lambda a: (a.alert_id, a.state)  # noqa: E731  topics are fed one after the other
    assert sorted(got, key=key) == sorted(expected, key=key)
    assert by_rows.to_dict() == by_events.to_dict()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_snapshot_plus_the_deltas_after_it_is_exactly_the_state(seed):
    """The alerts role writes each step's changes (:meth:`Rules.delta`) and now and then the whole
    state: over simulated traffic with budgets, failure and rate-limit bursts, wall-clock ticks
    (silent agents, stuck tasks, forgotten subjects), windows closing and days ending, the state
    at a random snapshot plus every delta after it, through JSON, is the state itself."""
    import random

    from streams.simulate import generate
    from tests.unit.busy_rules import busy_config

    print("seed", seed)
    rng = random.Random(seed)
    config = busy_config()
    start = T0 + timedelta(hours=23, minutes=50)  # a day ends within the run
    events = list(generate(seed, start_time=start, count=12_000, rate=10))
    for i, event in enumerate(events):
        if isinstance(event, LlmCall) and 3_000 <= i < 4_000:
            event.status = "rate_limited" if i % 2 else "error"
    rules = Rules(config)
    snapshot_at = rng.randrange(76, 96)  # within the failure burst: conditions fire across it
    snapshot, kinds, compared = None, set(), 0

    def step_done() -> None:
        # The step's delta; from the snapshot on, the snapshot plus the deltas is the state.
        nonlocal snapshot, compared
        delta = json.loads(json.dumps(rules.delta()))
        if snapshot is not None:
            Rules.apply_delta(snapshot, delta)
            assert snapshot == json.loads(json.dumps(rules.to_dict())), f"step {step}"
            compared += 1
        elif step == snapshot_at:
            snapshot = json.loads(json.dumps(rules.to_dict()))

    for step, begin in enumerate(range(0, len(events), 40)):
        for event in events[begin:begin + 40]:
            at = int(event.event_time.timestamp() * 1000)
            alerts = rules.observe(event, at)
            if isinstance(event, LlmCall):
                alerts += rules.advance(at - rng.randrange(0, 20_000))[0]
            kinds |= {a.kind for a in alerts}
        kinds |= {a.kind for a in rules.tick(at + rng.randrange(0, 60_000))}
        if rng.random() < 0.05:
            rules.windows.close_idle(at + 90_000, config.windows.idle_ms)
        step_done()
    # Hours later on the wall clock: every agent, task and firing condition is forgotten.
    rules.tick(at + 2 * config.stuck_task.forget_after_ms)
    step_done()
    assert compared > 100
    assert {"budget", "error_rate", "rate_limit_storm", "silent_agent", "stuck_task"} <= kinds, kinds
    assert Rules(config, snapshot).to_dict() == rules.to_dict()


def test_the_state_topic_restores_the_latest_snapshot_plus_the_deltas_after_it(monkeypatch):
    """What activation reads back: the latest snapshot and the deltas committed after it, each
    split into messages (tiny ones here), applied in order; deltas the snapshot covers, and the
    windows closed and produced since, are accounted for exactly."""
    from streams.intelligence import processor
    from streams.intelligence.processor import BEGIN_KEY, _chunks, _delta_keys, restore_state
    from streams.intelligence.snapshots import encode

    monkeypatch.setattr(processor, "CHUNK_BYTES", 300)
    config = IntelligenceConfig()
    rules = Rules(config)
    latest: dict[str, bytes | None] = {}
    pending: list = []

    def step(seq: int, minute: int) -> None:
        # A minute of calls; the previous minute's window closes; 0 to 2 pending windows go out
        # (some closed in the same step).
        for i in range(30):
            rules.observe_call(call(T0 + timedelta(minutes=minute, seconds=2 * i), 0.01), 0, 0)
        closed = [[vars(c), "watermark"] for c in rules.windows.close_due(
            int((T0 + timedelta(minutes=minute, seconds=15)).timestamp() * 1000))]
        produced = min(seq % 3, len(pending) + len(closed))
        pending.extend(closed)
        del pending[:produced]
        delta = {"seq": seq, "positions": {"calls:0": 30 * seq}, "watermarks": {}, "stats": {"events": 30 * seq},
                 "rules": rules.delta(), "windows_closed": closed, "windows_produced": produced}
        chunks = _chunks(encode(delta))
        for key, chunk in zip(_delta_keys(seq, len(chunks)), chunks):
            latest[key] = chunk

    for seq in range(1, 4):
        step(seq, seq)
    snapshot, seq = 1, 3
    chunks = _chunks(encode({
        "snapshot": snapshot, "seq": seq, "positions": {"calls:0": 90}, "watermarks": {}, "stats": {"events": 90},
        "rules": rules.to_dict(), "pending_windows": [list(p) for p in pending]}))
    latest.update({f"chunk-{i}": c for i, c in enumerate(chunks)})
    latest["manifest"] = json.dumps({"snapshot": snapshot, "seq": seq, "chunks": len(chunks)}).encode()
    latest.update({key: None for key in latest if key.startswith("delta-000000000001-")})  # tombstones
    for seq in range(4, 8):
        step(seq, seq)
    assert sum(key.startswith("delta-") for key in latest) > 10  # deltas of several messages
    latest[BEGIN_KEY.decode()] = None  # the tombstone each transaction opens with

    state = restore_state(dict(latest), config, "state")
    assert state["seq"] == 7 and state["positions"] == {"calls:0": 210} and state["stats"] == {"events": 210}
    assert state["rules"] == json.loads(json.dumps(rules.to_dict()))
    assert state["pending_windows"] == json.loads(json.dumps(pending)) and len(pending) > 0
    assert set(state["deltas"]) == {2, 3, 4, 5, 6, 7}  # on the topic until the next snapshot

    del latest[_delta_keys(5, state["deltas"][5])[0]]
    with pytest.raises(Exception, match="damaged delta 5"):
        restore_state(dict(latest), config, "state")
