"""``run_simulation`` on the real broker: what the report counts is exactly what the topics hold."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import pytest

from connectors.kafka.codec import decode
from connectors.kafka.schemas import TOPIC_EVENTS
from connectors.kafka.topics import catalogue, ensure_topics, topic_name
from connectors.settings import load_settings
from streams.simulate import DEFAULT_RATE, Progress, generate, run_simulation
from tests.integration.pipeline import SIMULATED
from tests.integration.topics import end_offsets, read_topics

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(("rate", "duration_s"), [(2_000, 3.0), (0, 1.0)], ids=["paced", "unpaced"])
def test_report_counts_what_the_topics_hold(settings, stack_overrides, unique, rate, duration_s):
    s = load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}."})
    ensure_topics(s, catalogue(s))
    seen: list[Progress] = []

    report = run_simulation(s, rate=rate, duration_s=duration_s, seed=7, start_time=T0, progress=seen.append)

    assert report.ok, report.error
    topics = [topic_name(s, base) for base in SIMULATED]
    assert set(report.topics) == set(topics)
    if rate:
        assert report.sent == 6_000
        # Paced: it cannot be faster than the rate allows (bursts are 50 ms at most).
        assert report.elapsed_s >= duration_s - 0.1
    assert seen and seen[-1].sent == report.sent

    # The topics hold exactly what the report says was delivered...
    ends = end_offsets(s, topics)
    held: Counter[str] = Counter()
    for (topic, _), end in ends.items():
        held[topic] += end
    assert held == {topic: c.delivered for topic, c in report.topics.items()}
    # ...and it is the seed's events, each keyed by its agent.
    counts: Counter[str] = Counter()
    event_ids: list[str] = []
    for msg in read_topics(s, topics):
        base = msg.topic().removeprefix(s.topic_prefix)
        _, record = decode(msg.value(), TOPIC_EVENTS[base])
        assert msg.key().decode() == record["agent_id"]
        counts[msg.topic()] += 1
        event_ids.append(str(record["event_id"]))

    assert counts == {topic: c.delivered for topic, c in report.topics.items()}
    assert all(c.sent == c.delivered and c.failed == 0 for c in report.topics.values())
    # What reached the broker is the deterministic stream of the seed, nothing else.
    expected = generate(7, start_time=T0, count=report.sent, rate=rate or DEFAULT_RATE)
    assert sorted(event_ids) == sorted(e.event_id for e in expected)
