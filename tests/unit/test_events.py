"""Typed events: generated from the schemas, in step with them, and validated before sending."""

from __future__ import annotations

import dataclasses

import pytest

from connectors.kafka import codegen
from connectors.kafka.codec import InvalidEvent, decode, encode
from connectors.kafka.events import EVENT_TYPES, LlmCall, TaskEvent
from connectors.kafka.producer import EventProducer
from connectors.kafka.schemas import TOPIC_EVENTS, default_registry
from connectors.settings import load_settings


def test_generated_module_is_up_to_date():
    assert codegen.EVENTS_MODULE.read_text() == codegen.render(), "run: ezstream schemas codegen"


def test_one_dataclass_per_event_with_the_schema_fields_in_order():
    registry = default_registry()
    assert set(EVENT_TYPES) == set(registry.events)
    for event, cls in EVENT_TYPES.items():
        schema_fields = [f["name"] for f in registry.current(event).schema["fields"]]
        assert [f.name for f in dataclasses.fields(cls)] == schema_fields
        assert TOPIC_EVENTS[cls.TOPIC] == event


def llm_call(**changes) -> LlmCall:
    values = dict(
        agent_id="development-01", agent_type="development", tenant_id="acme", trace_id="tr-1",
        call_id="c-1", provider="anthropic", model="claude-3-haiku", api_key_alias="anthropic-key-01",
        input_tokens=1200, output_tokens=300, cost_usd=0.000375, price_version="2026-11-01",
        latency_ms=812.5, status="ok", cache_hit=False,
    )
    return LlmCall(**{**values, **changes})


def test_typed_event_round_trips_with_defaults_filled():
    event = llm_call()
    name, record = decode(encode(event.EVENT, event.to_record()))
    assert name == "llm_call"
    assert str(record["event_id"]) == event.event_id
    assert record["event_time"] == event.event_time.replace(microsecond=event.event_time.microsecond // 1000 * 1000)
    assert record["prompt_snippet"] is None and record["cost_usd"] == 0.000375


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"input_tokens": "many"}, "input_tokens"),
        ({"provider": "acme-llm"}, "provider"),
        ({"agent_id": None}, "agent_id"),
    ],
)
def test_invalid_event_raises_before_anything_is_sent(tmp_path, changes, field):
    settings = load_settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1")
    producer = EventProducer(settings)
    with pytest.raises(InvalidEvent, match=field):
        producer.send(llm_call(**changes))
    assert producer.sent == {}  # nothing queued


def test_unknown_event_name_is_a_clear_error(tmp_path):
    producer = EventProducer(load_settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1"))
    with pytest.raises(Exception, match="no schema for event 'llm_calls'"):
        producer.topic_for("llm_calls")


def test_task_event_enums_are_typed():
    hints = {f.name: f.type for f in dataclasses.fields(TaskEvent)}
    assert "'high_priority'" in hints["queue"] and "'background'" in hints["queue"]
