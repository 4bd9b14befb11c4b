"""``run_simulation`` on the real broker: what the report counts is exactly what the topics hold."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import pytest
from confluent_kafka import Consumer

from connectors.kafka.codec import decode
from connectors.kafka.config import client_config
from connectors.kafka.schemas import TOPIC_EVENTS
from connectors.kafka.topics import catalogue, ensure_topics, topic_name
from connectors.settings import load_settings
from streams.simulate import DEFAULT_RATE, Progress, generate, run_simulation
from tests.conftest import wait_for

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)
SIMULATED = ("agent.tasks", "agent.llm_calls", "agent.telemetry")


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

    consumer = Consumer(client_config(s, **{
        "group.id": f"g.{unique}", "auto.offset.reset": "earliest", "enable.auto.commit": False,
    }))
    consumer.subscribe(topics)
    counts: Counter[str] = Counter()
    event_ids: list[str] = []
    try:
        def consumed_all() -> bool:
            for msg in consumer.consume(num_messages=1_000, timeout=0.5):
                assert msg.error() is None, msg.error()
                base = msg.topic().removeprefix(s.topic_prefix)
                _, record = decode(msg.value(), TOPIC_EVENTS[base])
                assert msg.key().decode() == record["agent_id"]
                counts[msg.topic()] += 1
                event_ids.append(str(record["event_id"]))
            return sum(counts.values()) >= report.sent

        try:
            wait_for(consumed_all, 60, f"{report.sent} simulated events", interval_s=0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; got {dict(counts)}, report {report.topics}") from None
        assert consumer.consume(num_messages=1, timeout=1.0) == []  # and nothing more
    finally:
        consumer.close()

    assert counts == {topic: c.delivered for topic, c in report.topics.items()}
    assert all(c.sent == c.delivered and c.failed == 0 for c in report.topics.values())
    # What reached the broker is the deterministic stream of the seed, nothing else.
    expected = generate(7, start_time=T0, count=report.sent, rate=rate or DEFAULT_RATE)
    assert sorted(event_ids) == sorted(e.event_id for e in expected)
