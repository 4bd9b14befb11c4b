"""The schema files, the schema registry and the compatibility checker."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from fastavro.validation import validate

from connectors.errors import ConfigError
from connectors.kafka.compat import check_all, check_pair, format_report, sample_records
from connectors.kafka.schemas import SCHEMAS_DIR, TOPIC_EVENTS, SchemaRegistry, default_registry, event_name
from connectors.kafka.topics import EVENT_TOPICS

EVENTS = ["alert", "inference_request", "inference_result", "llm_call", "llm_window", "task_event", "telemetry"]
ENVELOPE = [
    ("event_id", {"type": "string", "logicalType": "uuid"}),
    ("event_time", {"type": "long", "logicalType": "timestamp-millis"}),
    ("agent_id", "string"),
    ("agent_type", "string"),
    ("tenant_id", "string"),
    ("trace_id", "string"),
]


def v1(event: str) -> dict[str, Any]:
    """The committed v1 schema of ``event`` as written in its file."""
    return json.loads((SCHEMAS_DIR / event / "v1.avsc").read_text())


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def write_versions(root: Path, event: str, *versions: dict[str, Any]) -> Path:
    """A schemas folder under ``root`` holding ``versions`` of ``event`` as v1, v2, ..."""
    folder = root / event
    folder.mkdir(parents=True)
    for number, schema in enumerate(versions, start=1):
        (folder / f"v{number}.avsc").write_text(json.dumps(schema))
    return root


def with_changes(schema: dict[str, Any], change) -> dict[str, Any]:
    changed = copy.deepcopy(schema)
    change(changed)
    return changed


# --- the committed schema files -------------------------------------------------------------


def test_every_topic_has_its_schema():
    registry = default_registry()
    assert registry.events == EVENTS
    assert TOPIC_EVENTS == {
        "agent.tasks": "task_event",
        "agent.llm_calls": "llm_call",
        "agent.telemetry": "telemetry",
        "agent.alerts": "alert",
        "agent.llm_windows": "llm_window",
        "inference.requests": "inference_request",
        "inference.results": "inference_result",
    }
    for topic, record_name in EVENT_TOPICS.items():
        current = registry.current(registry.event_for_topic(topic))
        assert current.parsed["name"] == f"ezaigent.events.{record_name}"
        versions = registry.versions(current.event)
        assert versions == list(range(1, len(versions) + 1))  # v1, v2, … with no gap


@pytest.mark.parametrize("event", EVENTS)
def test_schema_file_conventions(event):
    schema = v1(event)
    assert schema["namespace"] == "ezaigent.events"
    assert schema["doc"]
    assert [(f["name"], f["type"]) for f in schema["fields"][: len(ENVELOPE)]] == ENVELOPE
    for f in schema["fields"]:
        assert f.get("doc"), f"{event}.{f['name']} has no doc"
        if isinstance(f["type"], list):
            # Optional fields: null first with a null default, so adding one later is compatible.
            assert f["type"][0] == "null" and "default" in f and f["default"] is None, f["name"]
        if isinstance(f["type"], dict) and f["type"]["type"] == "enum":
            enum = f["type"]
            assert enum["default"] in enum["symbols"], f"{event}.{f['name']}: enum without a default"
            assert f"'{enum['default']}'" in f["doc"], f"{event}.{f['name']}: doc does not name the default"


def test_domain_values_in_enums():
    assert field(v1("task_event"), "status")["type"]["symbols"] == [
        "queued", "started", "completed", "failed", "cancelled", "unknown"]
    assert field(v1("task_event"), "queue")["type"]["symbols"] == [
        "high_priority", "normal", "batch", "background", "unknown"]
    assert field(v1("llm_call"), "provider")["type"]["symbols"] == [
        "anthropic", "openai", "deepseek", "groq", "ollama", "other"]
    assert field(v1("llm_call"), "status")["type"]["symbols"] == ["ok", "error", "rate_limited", "timeout", "unknown"]
    assert field(v1("alert"), "kind")["type"]["default"] == "other"
    assert "never the key" in field(v1("llm_call"), "api_key_alias")["doc"]


# --- the registry ---------------------------------------------------------------------------


def test_event_name_of_record_names():
    assert event_name("TaskEvent") == "task_event"
    assert event_name("ezaigent.events.LlmCall") == "llm_call"
    assert event_name("Telemetry") == "telemetry"


def test_parsing_canonical_form_literally(tmp_path):
    ping = {
        "type": "record", "name": "Ping", "namespace": "ezaigent.events", "doc": "dropped",
        "fields": [
            {"name": "sent", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "dropped"},
            {"name": "mood", "type": {"type": "enum", "name": "Mood", "symbols": ["ok", "other"], "default": "other"}},
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
    }
    registry = SchemaRegistry(write_versions(tmp_path, "ping", ping))
    assert registry.current("ping").canonical_form == (
        '{"name":"ezaigent.events.Ping","type":"record","fields":['
        '{"name":"sent","type":"long"},'
        '{"name":"mood","type":{"name":"ezaigent.events.Mood","type":"enum","symbols":["ok","other"]}},'
        '{"name":"note","type":["null","string"]}]}'
    )


def test_registry_versions_and_fingerprint_lookup(tmp_path):
    new = with_changes(v1("telemetry"), lambda s: s["fields"].append(
        {"name": "gpu_percent", "type": ["null", "double"], "default": None, "doc": "GPU use."}))
    registry = SchemaRegistry(write_versions(tmp_path, "telemetry", v1("telemetry"), new))
    assert registry.versions("telemetry") == [1, 2]
    assert registry.current("telemetry").version == 2
    first, second = registry.get("telemetry", 1), registry.get("telemetry", 2)
    assert first.fingerprint != second.fingerprint and len(first.fingerprint) == 8
    assert registry.by_fingerprint(first.fingerprint) is first
    assert registry.by_fingerprint(second.fingerprint) is second
    assert registry.by_fingerprint(b"\0" * 8) is None
    assert first.fingerprint == default_registry().current("telemetry").fingerprint


def test_registry_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="no schema for event 'nope'"):
        default_registry().get("nope")
    with pytest.raises(ConfigError, match="no schema version 9"):
        default_registry().get("alert", 9)
    with pytest.raises(ConfigError, match="not an event topic"):
        default_registry().event_for_topic("agent.tasks.dlq")

    write_versions(tmp_path / "misnamed", "telemetry", v1("task_event"))
    with pytest.raises(ConfigError, match=r"telemetry.*'Telemetry'.*TaskEvent"):
        SchemaRegistry(tmp_path / "misnamed")

    (tmp_path / "badname" / "alert").mkdir(parents=True)
    (tmp_path / "badname" / "alert" / "2024.avsc").write_text(json.dumps(v1("alert")))
    with pytest.raises(ConfigError, match=r"2024\.avsc.*v<N>\.avsc"):
        SchemaRegistry(tmp_path / "badname")

    broken = with_changes(v1("alert"), lambda s: field(s, "kind")["type"].update(default="nonexistent"))
    write_versions(tmp_path / "broken", "alert", broken)
    with pytest.raises(ConfigError, match=r"v1\.avsc: not a valid Avro schema"):
        SchemaRegistry(tmp_path / "broken")

    with pytest.raises(ConfigError, match="does not exist"):
        SchemaRegistry(tmp_path / "missing")


# --- compatibility --------------------------------------------------------------------------


def test_committed_schemas_are_compatible():
    assert check_all() == []
    for event in EVENTS:
        assert check_pair(v1(event), v1(event)) == []


def test_added_optional_field_is_compatible_both_ways(tmp_path):
    new = with_changes(v1("task_event"), lambda s: s["fields"].append(
        {"name": "priority", "type": ["null", "string"], "default": None, "doc": "Scheduler priority."}))
    assert check_pair(v1("task_event"), new) == []
    assert check_all(write_versions(tmp_path, "task_event", v1("task_event"), new)) == []


def test_field_added_without_default_breaks_backward(tmp_path):
    new = with_changes(v1("task_event"), lambda s: s["fields"].append(
        {"name": "priority", "type": "string", "doc": "Scheduler priority."}))
    problems = check_all(write_versions(tmp_path, "task_event", v1("task_event"), new))
    assert [(p.event, p.old_version, p.new_version, p.direction, p.field) for p in problems] == [
        ("task_event", 1, 2, "backward", "priority")]
    assert "without a default" in problems[0].message
    report = format_report(problems)
    assert "task_event v1 -> v2, backward" in report and "'priority'" in report


def test_type_change_string_to_int_breaks_both_ways():
    new = with_changes(v1("llm_call"), lambda s: field(s, "model").update(type="int"))
    problems = check_pair(v1("llm_call"), new, event="llm_call", old_version=1, new_version=2)
    assert [(p.direction, p.field) for p in problems] == [("backward", "model"), ("forward", "model")]
    assert "string (v1) to int (v2)" in problems[0].message


def test_promotion_is_backward_only():
    new = with_changes(v1("llm_call"), lambda s: field(s, "input_tokens").update(type="long"))
    problems = check_pair(v1("llm_call"), new)
    assert [(p.direction, p.field) for p in problems] == [("forward", "input_tokens")]


def test_removed_required_field_breaks_forward():
    new = with_changes(v1("telemetry"), lambda s: s["fields"].remove(field(s, "queue_depth")))
    problems = check_pair(v1("telemetry"), new)
    assert [(p.direction, p.field) for p in problems] == [("forward", "queue_depth")]


def test_enum_symbol_added_needs_the_old_readers_default():
    def add_mistral(schema):
        field(schema, "provider")["type"]["symbols"].insert(-1, "mistral")

    assert check_pair(v1("llm_call"), with_changes(v1("llm_call"), add_mistral)) == []

    closed = with_changes(v1("llm_call"), lambda s: field(s, "provider")["type"].pop("default"))
    problems = check_pair(closed, with_changes(closed, add_mistral))
    assert [(p.direction, p.field) for p in problems] == [("forward", "provider")]
    assert "mistral" in problems[0].message and "no default" in problems[0].message


def test_nested_and_logical_changes_are_named():
    new = with_changes(v1("inference_result"), lambda s: field(s, "embeddings").update(
        type={"type": "array", "items": {"type": "array", "items": "string"}}))
    problems = check_pair(v1("inference_result"), new)
    assert {p.field for p in problems} == {"embeddings[][]"}

    new = with_changes(v1("alert"), lambda s: field(s, "first_seen")["type"].update(logicalType="timestamp-micros"))
    problems = check_pair(v1("alert"), new)
    assert [(p.direction, p.field) for p in problems] == [("backward", "first_seen"), ("forward", "first_seen")]
    assert "misread" in problems[0].message


def test_union_branch_added_breaks_forward():
    new = with_changes(v1("task_event"), lambda s: field(s, "region").update(type=["null", "string", "long"]))
    problems = check_pair(v1("task_event"), new)
    assert [(p.direction, p.field) for p in problems] == [("forward", "region")]


def test_format_report_without_problems():
    assert "compatible" in format_report([])


@pytest.mark.parametrize("event", EVENTS)
def test_sample_records_cover_the_schema(event):
    schema = v1(event)
    samples = sample_records(schema)
    for record in samples:
        assert validate(record, schema, raise_errors=True)
    for f in schema["fields"]:
        values = [record[f["name"]] for record in samples]
        if isinstance(f["type"], list):
            assert None in values and any(v is not None for v in values), f["name"]
        elif isinstance(f["type"], dict) and f["type"]["type"] == "enum":
            assert set(values) == set(f["type"]["symbols"]), f["name"]
        elif isinstance(f["type"], dict) and f["type"]["type"] in ("array", "map"):
            assert any(len(v) == 0 for v in values) and any(len(v) > 1 for v in values), f["name"]
