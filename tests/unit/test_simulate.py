"""The traffic simulator: determinism, valid events, the fleet, and the invariants of its world."""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from connectors.errors import ConfigError
from connectors.kafka.codec import encode
from connectors.kafka.events import Event, LlmCall, TaskEvent, Telemetry
from connectors.pricing import PriceTable
from streams.simulate import (
    DEFAULT_FLEET,
    DEFAULT_RATE,
    SimulationReport,
    TokenBucket,
    TopicCounts,
    format_report,
    generate,
    parse_fleet,
)

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)
ENDED = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def events() -> list[Event]:
    """20,000 events of the default fleet at the default rate: 200 simulated seconds."""
    return list(generate(7, start_time=T0, count=20_000))


def of(events: list[Event], kind: type[Event]) -> list:
    return [e for e in events if isinstance(e, kind)]


def encoded(events) -> list[bytes]:
    return [encode(e.EVENT, e.to_record()) for e in events]


def test_same_seed_gives_the_same_bytes_and_another_seed_other_events(events):
    first = encoded(events[:5_000])
    assert encoded(generate(7, start_time=T0, count=5_000)) == first
    other = encoded(generate(8, start_time=T0, count=5_000))
    assert sum(a != b for a, b in zip(first, other)) > 4_900


def test_event_times_come_from_the_simulated_clock(events):
    # 100 events/s: the clock moves 10 ms per event, from start_time, whatever the wall clock says.
    assert [e.event_time for e in events[:3]] == [T0, T0 + timedelta(milliseconds=10), T0 + timedelta(milliseconds=20)]
    assert events[-1].event_time == T0 + timedelta(milliseconds=10 * 19_999)
    assert all(a.event_time <= b.event_time for a, b in zip(events, events[1:]))


def test_duration_and_rate_give_the_count_and_shorter_runs_are_prefixes(events):
    assert list(generate(7, start_time=T0, duration_s=30, rate=DEFAULT_RATE)) == events[:3_000]
    fast = list(generate(7, start_time=T0, duration_s=2, rate=2_000))
    assert len(fast) == 4_000
    assert fast[-1].event_time == T0 + timedelta(milliseconds=1_999)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"count": 10, "duration_s": 1}, "count or duration_s, not both"),
    ({"count": 10, "rate": 0}, "rate must be > 0"),
    ({"count": -1}, "count must be >= 0"),
    ({"count": 10, "start_time": datetime(2026, 1, 1)}, "timezone-aware"),
    ({"count": 10, "fleet": {"wizard": 3}}, "unknown agent type"),
])
def test_bad_arguments_fail_at_once_naming_the_argument(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        generate(7, **{"start_time": T0, **kwargs})


def test_every_event_is_valid_against_its_schema(events):
    encoded(events)  # encode validates each record against its schema and raises InvalidEvent
    assert Counter(e.EVENT for e in events).keys() == {"task_event", "llm_call", "telemetry"}
    assert len({e.event_id for e in events}) == len(events)


def test_default_fleet_shape(events):
    agents = {(e.agent_id, e.agent_type) for e in of(events, Telemetry)}
    assert len(agents) == 38
    assert Counter(agent_type for _, agent_type in agents) == dict(DEFAULT_FLEET)
    assert {agent_id for agent_id, t in agents if t == "development"} == {f"development-{n:02d}" for n in range(1, 11)}
    # Each agent lives in one region and works for one tenant; the fleet spans the three regions.
    placement = {(e.agent_id, e.region, e.tenant_id) for e in events}
    assert len(placement) == 38
    assert {region for _, region, _ in placement} == {"us-east-1", "eu-west-1", "ap-southeast-1"}
    assert 2 <= len({tenant for _, _, tenant in placement}) <= 5


def test_parse_fleet_and_a_small_fleet():
    fleet = parse_fleet(" development = 2, research=3 ")
    assert fleet == {"development": 2, "research": 3}
    ids = {e.agent_id for e in generate(1, start_time=T0, count=2_000, fleet=fleet)}
    assert ids == {"development-01", "development-02", "research-01", "research-02", "research-03"}


@pytest.mark.parametrize(("spec", "message"), [
    ("", "expected agent_type=count"),
    ("development", "expected agent_type=count.*got 'development'"),
    ("=3", "expected agent_type=count"),
    ("development=two", "count of 'development' must be a whole number >= 0, got 'two'"),
    ("development=-1", "count of 'development' must be a whole number"),
    ("development=1,development=2", "'development' is given twice"),
    ("wizard=2", "unknown agent type.*'wizard'.*known: development, content, enterprise, research"),
    ("development=0", "no agents"),
])
def test_parse_fleet_errors_say_what_is_wrong(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_fleet(spec)


def test_task_lifecycles_are_consistent(events):
    """queued -> started -> completed|failed|cancelled per attempt; a retry re-queues the task.

    Wait and duration are the differences of the attempt's event times; its calls lie between its
    start and its end, and the cost of its end is the sum of its calls' costs.
    """
    open_attempts: dict[str, dict] = {}
    last_attempt: dict[str, TaskEvent] = {}
    ended = Counter()
    for index, e in enumerate(events):
        if isinstance(e, TaskEvent):
            attempt = open_attempts.get(e.task_id)
            if e.status == "queued":
                assert attempt is None
                previous = last_attempt.get(e.task_id)
                if previous is None:
                    assert e.attempt == 1
                else:  # only a failed attempt is retried, as the next attempt
                    assert (previous.status, e.attempt) == ("failed", previous.attempt + 1)
                assert (e.queue_wait_ms, e.duration_ms, e.cost_usd) == (None, None, 0.0)
                open_attempts[e.task_id] = {"queued": e, "started": None, "calls": []}
                continue
            assert attempt is not None, f"{e.status} without queued: {e}"
            queued, started = attempt["queued"], attempt["started"]
            assert (e.attempt, e.queue, e.trace_id, e.agent_id) == (
                queued.attempt, queued.queue, queued.trace_id, queued.agent_id)
            if e.status == "started":
                assert started is None
                assert e.queue_wait_ms == (e.event_time - queued.event_time) // timedelta(milliseconds=1)
                assert (e.duration_ms, e.cost_usd) == (None, 0.0)
                attempt["started"] = e
                continue
            assert e.status in ENDED and started is not None, f"{e.status} before started: {e}"
            assert e.event_time >= started.event_time
            assert e.queue_wait_ms == started.queue_wait_ms
            assert e.duration_ms == (e.event_time - started.event_time) // timedelta(milliseconds=1)
            assert e.cost_usd == pytest.approx(sum(c.cost_usd for c in attempt["calls"]), abs=1e-12)
            assert (e.error_category is not None) == (e.status == "failed")
            assert e.quality_score is None or (e.status == "completed" and 0 <= e.quality_score <= 1)
            ended[e.status] += 1
            last_attempt[e.task_id] = e
            del open_attempts[e.task_id]
        elif isinstance(e, LlmCall):
            attempt = open_attempts.get(e.task_id)
            assert attempt is not None and attempt["started"] is not None, f"call {index} outside a running task"
            assert (e.trace_id, e.agent_id) == (attempt["started"].trace_id, attempt["started"].agent_id)
            attempt["calls"].append(e)
    assert ended["completed"] > 1_000 and ended["failed"] > 20 and ended["cancelled"] > 10
    assert any(e.attempt > 1 for e in last_attempt.values())


def test_calls_are_billed_from_the_price_table(events):
    table = PriceTable.load()
    calls = of(events, LlmCall)
    for c in calls:
        assert c.price_version == table.version
        billed = c.status == "ok" and not c.cache_hit
        if billed:
            assert c.input_tokens > 0 and c.output_tokens > 0
            assert c.cost_usd == table.cost(c.provider, c.model, c.input_tokens, c.output_tokens,
                                            cache_read_tokens=c.cache_read_tokens,
                                            cache_write_tokens=c.cache_write_tokens)
        else:
            assert (c.input_tokens, c.output_tokens, c.cost_usd) == (0, 0, 0.0)
            assert (c.cache_read_tokens, c.cache_write_tokens) == (0, 0)
        assert c.model in table.models(c.provider)
        assert re.fullmatch(rf"{c.provider}-key-\d\d", c.api_key_alias)
    keys = defaultdict(set)
    for c in calls:
        keys[c.provider].add(c.api_key_alias)
    assert keys.keys() == {"anthropic", "openai", "deepseek", "groq", "ollama"}
    assert all(len(aliases) <= 20 for aliases in keys.values())
    assert len(keys["anthropic"]) >= 10 and len(keys["openai"]) >= 10


def test_llm_status_rates_are_plausible(events):
    calls = of(events, LlmCall)
    assert len(calls) > 10_000
    share = {status: n / len(calls) for status, n in Counter(c.status for c in calls).items()}
    assert share["ok"] > 0.75
    assert 0.01 <= share["error"] <= 0.06
    assert 0 < share["timeout"] <= 0.02
    assert 0 < share["rate_limited"] <= 0.25
    ok = [c for c in calls if c.status == "ok"]
    assert 0.02 <= sum(c.cache_hit for c in ok) / len(ok) <= 0.2


def test_latency_by_provider_groq_fast_opus_slow(events):
    latencies = defaultdict(list)
    for c in of(events, LlmCall):
        if c.status == "ok" and not c.cache_hit:
            latencies[c.model].append(c.latency_ms)
    medians = {model: statistics.median(values) for model, values in latencies.items()}
    assert max(medians, key=medians.get) in ("claude-3-opus", "gpt-4")
    assert min(medians, key=medians.get) in ("mixtral-8x7b", "llama2-70b")
    assert medians["mixtral-8x7b"] < 1_000 < 10_000 < medians["claude-3-opus"]


def test_rate_limited_comes_in_storms():
    """Over 1,000 simulated seconds, some minutes of a provider are mostly rate limited, most hardly."""
    windows = defaultdict(Counter)
    for e in generate(7, start_time=T0, count=100_000):
        if isinstance(e, LlmCall):
            window = windows[e.provider, (e.event_time - T0) // timedelta(minutes=1)]
            window["calls"] += 1
            window["limited"] += e.status == "rate_limited"
    shares = [w["limited"] / w["calls"] for w in windows.values() if w["calls"] >= 20]
    assert max(shares) > 0.2
    assert statistics.median(shares) < 0.03


def test_enterprise_agents_are_the_heaviest_and_research_the_lightest(events):
    per_agent = Counter(DEFAULT_FLEET)
    cost, tasks, urgent, tokens = Counter(), Counter(), Counter(), defaultdict(list)
    for e in events:
        if isinstance(e, TaskEvent) and e.status == "queued" and e.attempt == 1:
            tasks[e.agent_type] += 1
            urgent[e.agent_type] += e.queue == "high_priority"
        elif isinstance(e, LlmCall):
            cost[e.agent_type] += e.cost_usd
            if e.input_tokens:
                tokens[e.agent_type].append(e.input_tokens + e.output_tokens)
    for measure in (
        {t: cost[t] / per_agent[t] for t in per_agent},
        {t: tasks[t] / per_agent[t] for t in per_agent},
        {t: urgent[t] / tasks[t] for t in per_agent},
        {t: statistics.mean(tokens[t]) for t in per_agent},
    ):
        ranking = sorted(measure, key=measure.get)
        assert (ranking[0], ranking[-1]) == ("research", "enterprise"), measure


def test_telemetry_cadence_and_figures_agree_with_the_stream(events):
    """Heartbeats every 10 s per agent; queue depth and error count follow the agent's own events."""
    queued, errors = Counter(), Counter()
    last_beat: dict[str, datetime] = {}
    beats = 0
    for e in events:
        if isinstance(e, TaskEvent):
            queued[e.agent_id] += {"queued": 1, "started": -1}.get(e.status, 0)
            errors[e.agent_id] += e.status == "failed"
        elif isinstance(e, LlmCall):
            errors[e.agent_id] += e.status != "ok"
        else:
            assert e.queue_depth == queued[e.agent_id]
            assert e.error_count == errors[e.agent_id]
            errors[e.agent_id] = 0
            assert 0 < e.cpu_percent <= 100 and 0 <= e.memory_percent <= 100
            assert e.memory_mb > 0 and e.response_time_ms > 0
            if e.agent_id in last_beat:
                gap = (e.event_time - last_beat[e.agent_id]).total_seconds()
                assert 9.5 <= gap <= 10.5, (e.agent_id, gap)
            last_beat[e.agent_id] = e.event_time
            beats += 1
    assert beats >= 38 * 19


def test_some_agents_leak_memory_slowly():
    """Over ~3 simulated hours, a few agents' memory climbs tens of MB an hour; the rest stay flat."""
    fleet = parse_fleet("development=6,research=6")
    series = defaultdict(list)
    for e in generate(7, start_time=T0, count=20_000, rate=2, fleet=fleet):
        if isinstance(e, Telemetry):
            series[e.agent_id].append(((e.event_time - T0) / timedelta(hours=1), e.memory_mb))
    slopes = [statistics.linear_regression(*zip(*points)).slope for points in series.values()]
    assert len(slopes) == 12
    assert any(slope > 25 for slope in slopes)
    assert sum(abs(slope) < 15 for slope in slopes) >= 8


def test_token_bucket_paces_on_the_clock_and_bounds_bursts():
    clock = [0.0]

    def wait(seconds: float) -> None:
        clock[0] += seconds * 1.5  # oversleeping must not slow the long-run rate down

    bucket = TokenBucket(100, burst=5, clock=lambda: clock[0], wait=wait)
    for _ in range(1_001):
        bucket.take()
    assert clock[0] == pytest.approx(10.0, abs=0.02)
    clock[0] += 60  # idle for a minute: at most `burst` tokens build up
    start = clock[0]
    for _ in range(5):
        bucket.take()
    assert clock[0] == start
    bucket.take()
    assert clock[0] > start


def test_format_report_has_a_row_per_topic_and_a_total():
    report = SimulationReport(
        seed=7, rate=2_000.0, fleet=dict(DEFAULT_FLEET), start_time=T0, price_version="2026-11-01",
        elapsed_s=3.0, topics={
            "agent.llm_calls": TopicCounts(3_500, 3_500, 0),
            "agent.tasks": TopicCounts(2_300, 2_298, 2),
            "agent.telemetry": TopicCounts(200, 200, 0),
        }, error="delivery failed for agent.tasks: 2",
    )
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0].split() == ["topic", "sent", "delivered", "failed"]
    assert lines[2].split() == ["agent.tasks", "2,300", "2,298", "2"]
    assert lines[4].split() == ["total", "6,000", "5,998", "2"]
    assert "6,000 events in 3.00 s (2,000/s, paced at 2,000/s); seed 7" in text
    assert "error: delivery failed" in text
    assert (report.sent, report.delivered, report.failed, report.ok) == (6_000, 5_998, 2, False)


def test_prompt_caches_read_and_write_as_each_provider_does(events):
    calls = [c for c in of(events, LlmCall) if c.status == "ok" and not c.cache_hit]
    by_provider = defaultdict(lambda: [0, 0, 0])  # input, cache read, cache write
    for c in calls:
        assert c.cache_read_tokens + c.cache_write_tokens <= c.input_tokens and c.reasoning_tokens == 0
        assert not (c.cache_read_tokens and c.cache_write_tokens), "a call reads the prefix or writes it"
        totals = by_provider[c.provider]
        totals[0] += c.input_tokens
        totals[1] += c.cache_read_tokens
        totals[2] += c.cache_write_tokens
    # groq and ollama cache nothing; only anthropic bills (and reports) writes.
    for provider in ("groq", "ollama"):
        assert by_provider[provider][1:] == [0, 0]
    for provider in ("openai", "deepseek"):
        assert by_provider[provider][2] == 0
    # Tasks repeat their prefix: a good part of the prompt tokens of the caching providers are reads.
    for provider in ("anthropic", "openai", "deepseek"):
        total, read, write = by_provider[provider]
        assert 0.2 < read / total < 0.75, (provider, read / total)
    assert 0 < by_provider["anthropic"][2] < by_provider["anthropic"][1]
    # A read costs less than the same tokens fresh.
    table = PriceTable.load()
    c = next(c for c in calls if c.provider == "anthropic" and c.cache_read_tokens)
    assert c.cost_usd < table.cost(c.provider, c.model, c.input_tokens, c.output_tokens)
