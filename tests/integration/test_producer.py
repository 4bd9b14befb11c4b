"""The producer SDK and `ezstream produce` against the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from connectors.kafka.codec import decode
from connectors.kafka.events import LlmCall, Telemetry
from connectors.kafka.producer import DeliveryError, EventProducer
from connectors.kafka.topics import catalogue, ensure_topics, topic_name
from connectors.settings import load_settings
from tests.integration.topics import read_topics


@pytest.fixture
def prefixed(stack_overrides, settings, unique):
    """Settings whose catalogue topics are this test's own (``t.<unique>.agent.…``), created."""
    own = load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}.", "topic_partitions": 4})
    ensure_topics(own, catalogue(own))
    return own


def call(i: int) -> LlmCall:
    return LlmCall(
        agent_id=f"development-{i % 10:02d}", agent_type="development", tenant_id="acme",
        trace_id=f"tr-{i}", call_id=f"call-{i}", provider="openai", model="gpt-4",
        api_key_alias=f"openai-key-{i % 12:02d}", input_tokens=1000 + i, output_tokens=200,
        cost_usd=round((1200 + i) * 0.03 / 1000, 8), price_version="2026-11-01",
        latency_ms=900.0 + i, status="ok", cache_hit=i % 5 == 0,
        event_time=datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc),
    )


def test_typed_events_are_keyed_ordered_and_reported(prefixed):
    deliveries = []
    with EventProducer(prefixed, on_delivery=deliveries.append) as producer:
        for i in range(300):
            producer.send(call(i))
        producer.send(Telemetry(agent_id="research-01", agent_type="research", tenant_id="acme",
                                trace_id="hb-1", cpu_percent=42.0, memory_percent=61.5, memory_mb=2048.0,
                                response_time_ms=350.0, error_count=0, queue_depth=3))
    topic = topic_name(prefixed, "agent.llm_calls")
    assert producer.delivered == {topic: 300, topic_name(prefixed, "agent.telemetry"): 1}
    assert producer.failed == {}
    assert len(deliveries) == 301 and all(d.error is None and d.offset >= 0 for d in deliveries)

    messages = read_topics(prefixed, [topic])
    assert len(messages) == 300
    by_agent: dict[bytes, set[int]] = {}
    seq: dict[bytes, list[int]] = {}
    for msg in messages:
        event, record = decode(msg.value())
        assert event == "llm_call"
        assert msg.key() == record["agent_id"].encode()
        by_agent.setdefault(msg.key(), set()).add(msg.partition())
        seq.setdefault(msg.key(), []).append(int(record["call_id"].split("-")[1]))
    assert sorted(i for calls in seq.values() for i in calls) == list(range(300))
    assert all(len(partitions) == 1 for partitions in by_agent.values())  # keyed by agent_id
    assert all(calls == sorted(calls) for calls in seq.values())  # per-agent order kept


def test_undeliverable_messages_raise_a_delivery_error_naming_the_topic(settings, unique):
    missing = f"t.{unique}.does-not-exist"
    producer = EventProducer(settings, **{"message.timeout.ms": 3000})
    producer.send(call(1), topic=missing)
    with pytest.raises(DeliveryError, match=missing):
        producer.flush(timeout_s=30)
    assert producer.failed == {missing: 1}


def test_produce_cli_sends_good_lines_and_reports_bad_ones(prefixed, tmp_path):
    good = call(7).to_record()
    good.pop("event_id")
    good["event_time"] = "2026-11-26T12:00:00Z"
    import json

    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "input_tokens": "many"}),
        json.dumps({**good, "agent_id": "content-02"}),
        "",
        json.dumps({**good, "surprise": 1}),
        json.dumps({**good, "agent_id": "enterprise-05"}),
    ]
    source = tmp_path / "calls.jsonl"
    source.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "EZ_HOME": str(prefixed.home), "EZ_KAFKA_BOOTSTRAP": prefixed.kafka_bootstrap,
           "EZ_TOPIC_PREFIX": prefixed.topic_prefix}
    result = subprocess.run([sys.executable, "-m", "streams.cli", "produce", "--topic", "agent.llm_calls",
                             str(source)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "line 2: not JSON" in result.stderr
    assert "line 3: llm_call v1: field 'input_tokens' is 'many'" in result.stderr
    assert "line 6:" in result.stderr and "surprise" in result.stderr
    assert "sent 3, delivered 3, rejected 3" in result.stdout

    messages = read_topics(prefixed, [topic_name(prefixed, "agent.llm_calls")])
    agents = sorted(decode(m.value())[1]["agent_id"] for m in messages)
    assert agents == ["content-02", "development-07", "enterprise-05"]
