"""Single-object encoding, decoding with schema resolution, batch and Arrow decoding."""

from __future__ import annotations

import copy
import io
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastavro import schemaless_writer

from connectors.errors import ConfigError, TerminalError
from connectors.kafka import codec
from connectors.kafka.codec import (
    MARKER,
    BadMarker,
    Codec,
    InvalidEvent,
    UndecodableBody,
    UnknownSchema,
    WrongEventType,
)
from connectors.kafka.schemas import SCHEMAS_DIR, SchemaRegistry, default_registry

T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)


def crc64_avro(data: bytes) -> int:
    """Reference CRC-64-AVRO (Rabin) fingerprint, straight from the Avro specification."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def envelope(agent_id: str, agent_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{agent_id}/{sorted(fields)}")),
        "event_time": T0,
        "agent_id": agent_id,
        "agent_type": agent_type,
        "tenant_id": "tenant-acme",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        **fields,
    }


SAMPLES: dict[str, dict[str, Any]] = {
    "task_event": envelope(
        "dev-03", "development", task_id="task-8812", status="completed", queue="high_priority", attempt=2,
        queue_wait_ms=1450, duration_ms=48_210, quality_score=0.91, cost_usd=0.0735, price_version="2025-03",
        error_category=None, region="us-east-1",
    ),
    "llm_call": envelope(
        "research-11", "research", call_id="call-77f1", task_id="task-8813", provider="anthropic",
        model="claude-3-haiku", api_key_alias="anthropic-07", input_tokens=1834, output_tokens=412,
        cost_usd=0.000561, price_version="2025-03", latency_ms=812.5, status="ok", cache_hit=False,
        region="eu-west-1", prompt_snippet=None, output_snippet=None, cache_read_tokens=1024,
        cache_write_tokens=0, reasoning_tokens=0,
    ),
    "telemetry": envelope(
        "enterprise-02", "enterprise", cpu_percent=71.5, memory_percent=64.2, memory_mb=3288.0,
        response_time_ms=5120.0, error_count=3, queue_depth=117, region="ap-southeast-1",
    ),
    "alert": envelope(
        "processor-alerts", "processor", alert_id="budget:tenant-acme:90", kind="budget", severity="warning",
        state="firing", subject="tenant-acme", message="tenant-acme spent 90% of its monthly budget",
        value=902.4, threshold=900.0, window_start=T0 - timedelta(days=13), window_end=T0,
        first_seen=T0 - timedelta(minutes=5), last_seen=T0, details={"budget_usd": "1000", "level": "90"},
    ),
    "llm_window": envelope(
        "research-11", "research", provider="anthropic", model="claude-3-haiku", window_start=T0 - timedelta(minutes=1),
        window_end=T0, calls=42, errors=3, rate_limited=1, input_tokens=77_028, output_tokens=17_304, cost_usd=0.023562,
        latency_p50_ms=812.5, latency_p95_ms=2210.0, latency_p99_ms=4013.25, latency_sketch='{"gamma": 1.02}',
        closed_by="watermark",
    ),
    "inference_request": envelope(
        "content-04", "content", correlation_id="corr-1", model="bge-small-en", task="embed",
        inputs=["viral hooks for a launch video", "three taglines"], reply_topic=None, deadline_ms=2000,
    ),
    "inference_result": envelope(
        "content-04", "content", correlation_id="corr-1", model="bge-small-en", model_version="v1.5-2a9f",
        embeddings=[[0.25, -0.5, 1.0], [0.125, 0.0, -1.0]], queue_ms=3.5, compute_ms=18.25, error=None,
    ),
}


def as_decoded(record: dict[str, Any]) -> dict[str, Any]:
    """What decoding ``record`` gives: the event_id as a UUID, datetimes unchanged."""
    return {**record, "event_id": uuid.UUID(record["event_id"])}


def schema_file(event: str) -> dict[str, Any]:
    return json.loads((SCHEMAS_DIR / event / "v1.avsc").read_text())


def registry_with_v2(tmp_path: Path, event: str, change) -> SchemaRegistry:
    """A registry holding the committed v1 of ``event`` and a v2 made by ``change`` on a copy."""
    new = copy.deepcopy(schema_file(event))
    change(new)
    folder = tmp_path / event
    folder.mkdir()
    (folder / "v1.avsc").write_text(json.dumps(schema_file(event)))
    (folder / "v2.avsc").write_text(json.dumps(new))
    return SchemaRegistry(tmp_path)


# --- fingerprints and the single-object header ----------------------------------------------


def test_reference_crc64_avro_fixed_vector():
    # The fingerprint of the schema "int" (canonical form "int"), as the Avro test suite lists it.
    assert crc64_avro(b'"int"') == 0x7275D51A3F395C8F
    assert crc64_avro(b'"int"').to_bytes(8, "little").hex() == "8f5c393f1ad57572"


def test_registry_fingerprints_match_the_reference():
    for event in default_registry().events:
        version = default_registry().current(event)
        assert version.fingerprint == crc64_avro(version.canonical_form.encode()).to_bytes(8, "little")


@pytest.mark.parametrize("event", sorted(SAMPLES))
def test_single_object_encoding_byte_for_byte(event):
    version = default_registry().current(event)
    data = codec.encode(event, SAMPLES[event])
    body = io.BytesIO()
    schemaless_writer(body, version.parsed, SAMPLES[event])
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == crc64_avro(version.canonical_form.encode()).to_bytes(8, "little")
    assert data[10:] == body.getvalue()


@pytest.mark.parametrize("event", sorted(SAMPLES))
def test_round_trip(event):
    assert codec.decode(codec.encode(event, SAMPLES[event])) == (event, as_decoded(SAMPLES[event]))
    assert codec.decode(codec.encode(event, SAMPLES[event]), event)[0] == event


def test_round_trip_accepts_uuid_objects_and_epoch_millis_and_omitted_nulls():
    record = {k: v for k, v in SAMPLES["llm_call"].items() if k not in ("prompt_snippet", "output_snippet")}
    record |= {"event_id": uuid.UUID(SAMPLES["llm_call"]["event_id"]), "event_time": int(T0.timestamp() * 1000)}
    _, decoded = codec.decode(codec.encode("llm_call", record))
    assert decoded == as_decoded(SAMPLES["llm_call"])


def test_default_codec_is_built_once():
    assert codec.default_codec() is codec.default_codec()
    assert codec.default_codec().registry is default_registry()


# --- invalid events -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cost_usd": "free"}, "field 'cost_usd' is 'free' (str), expected double"),
        ({"task_id": None}, "field 'task_id' is None (NoneType), expected string"),
        ({"status": "exploded"}, "field 'status' is 'exploded' (str), expected one of the symbols queued, "),
        ({"quality_score": "high"}, "field 'quality_score' is 'high' (str), expected null or double"),
        ({"event_id": "not-a-uuid"}, "field 'event_id' is 'not-a-uuid', not a UUID"),
        ({"event_time": "yesterday"}, "field 'event_time' is 'yesterday' (str), expected timestamp-millis"),
        ({"cost": 1.0}, "unknown field(s) 'cost'"),
    ],
)
def test_invalid_event_names_the_field(change, message):
    with pytest.raises(InvalidEvent) as raised:
        codec.encode("task_event", SAMPLES["task_event"] | change)
    assert isinstance(raised.value, TerminalError)
    assert str(raised.value).startswith("task_event v1: ")
    assert message in str(raised.value)


def test_invalid_event_missing_field_and_nested_value():
    missing = {k: v for k, v in SAMPLES["task_event"].items() if k != "price_version"}
    with pytest.raises(InvalidEvent, match="field 'price_version' is missing \\(expected string\\)"):
        codec.encode("task_event", missing)
    with pytest.raises(InvalidEvent, match="field 'inputs' holds 7 \\(int\\) where string is expected"):
        codec.encode("inference_request", SAMPLES["inference_request"] | {"inputs": ["fine", 7]})
    with pytest.raises(InvalidEvent, match="expected a mapping"):
        codec.encode("telemetry", [1, 2])  # type: ignore[arg-type]


def test_unknown_event_is_a_config_error():
    with pytest.raises(ConfigError, match="no schema for event 'task'"):
        codec.encode("task", SAMPLES["task_event"])


# --- evolution ------------------------------------------------------------------------------


def add_priority(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "priority", "type": ["null", "string"], "default": None, "doc": "Priority."})


def test_new_reader_reads_old_writer(tmp_path):
    registry = registry_with_v2(tmp_path, "task_event", add_priority)
    v2_codec = Codec(registry)
    data = v2_codec.encode("task_event", SAMPLES["task_event"], version=1)
    assert data[2:10] == registry.get("task_event", 1).fingerprint
    assert v2_codec.decode(data) == ("task_event", as_decoded(SAMPLES["task_event"]) | {"priority": None})


def test_old_reader_reads_new_writer(tmp_path):
    registry = registry_with_v2(tmp_path, "task_event", add_priority)
    v1_reader = Codec(registry, reader_versions={"task_event": 1})
    assert v1_reader.reader("task_event").version == 1
    data = Codec(registry).encode("task_event", SAMPLES["task_event"] | {"priority": "urgent"})
    assert data[2:10] == registry.get("task_event", 2).fingerprint
    assert v1_reader.decode(data) == ("task_event", as_decoded(SAMPLES["task_event"]))


def test_old_reader_reads_a_new_enum_symbol_as_the_default(tmp_path):
    registry = registry_with_v2(
        tmp_path, "llm_call", lambda s: next(f for f in s["fields"] if f["name"] == "provider")["type"]["symbols"]
        .insert(-1, "mistral"),
    )
    v1_fields = {f["name"] for f in schema_file("llm_call")["fields"]}
    record = {k: v for k, v in SAMPLES["llm_call"].items() if k in v1_fields}
    record |= {"provider": "mistral", "model": "mistral-large"}
    data = Codec(registry).encode("llm_call", record)
    assert Codec(registry).decode(data)[1]["provider"] == "mistral"
    _, old_view = Codec(registry, reader_versions={"llm_call": 1}).decode(data)
    assert old_view == as_decoded(record) | {"provider": "other"}


def test_reader_without_the_writer_schema_reports_unknown_schema(tmp_path):
    registry = registry_with_v2(tmp_path, "task_event", add_priority)
    data = Codec(registry).encode("task_event", SAMPLES["task_event"])
    with pytest.raises(UnknownSchema, match=registry.current("task_event").fingerprint.hex()):
        codec.decode(data)


# --- batches --------------------------------------------------------------------------------


def test_decode_batch_keeps_good_messages_and_reports_bad_ones():
    good = codec.encode("task_event", SAMPLES["task_event"])
    second = SAMPLES["task_event"] | {"task_id": "task-8814", "status": "failed", "error_category": "timeout"}
    messages = [
        good,
        b"garbage, not avro",
        b"\xc3\x01" + b"\x00" * 8 + good[10:],
        good[:-4],
        codec.encode("task_event", second),
        codec.encode("telemetry", SAMPLES["telemetry"]),
        None,
        b"\xc3\x01\x00",
        good + b"\x00",
    ]
    batch = codec.decode_batch(messages, "task_event")
    assert batch.records == [as_decoded(SAMPLES["task_event"]), as_decoded(second)]
    assert [(f.index, f.error_class) for f in batch.failures] == [
        (1, "BadMarker"),
        (2, "UnknownSchema"),
        (3, "UndecodableBody"),
        (5, "WrongEventType"),
        (6, "BadMarker"),
        (7, "BadMarker"),
        (8, "UndecodableBody"),
    ]
    messages_by_index = {f.index: f.message for f in batch.failures}
    assert "starts with 6761, not c301" in messages_by_index[1]
    assert "0000000000000000" in messages_by_index[2]
    assert "truncated" in messages_by_index[3]
    assert "expected task_event, got telemetry v1" in messages_by_index[5]
    assert "1 bytes after the end of the body" in messages_by_index[8]


def test_decode_errors_are_terminal():
    for error, data in [(BadMarker, b""), (UnknownSchema, b"\xc3\x01" + b"\xff" * 12)]:
        with pytest.raises(error) as raised:
            codec.decode(data)
        assert isinstance(raised.value, TerminalError)
    good = codec.encode("alert", SAMPLES["alert"])
    with pytest.raises(WrongEventType):
        codec.decode(good, "telemetry")
    with pytest.raises(UndecodableBody):
        codec.decode(good[:12])


def test_decode_batch_of_an_unknown_event_is_a_config_error():
    with pytest.raises(ConfigError):
        codec.decode_batch([], "nope")


# --- Arrow ----------------------------------------------------------------------------------

ENVELOPE_ARROW = [
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("event_time", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("agent_id", pa.string(), nullable=False),
    pa.field("agent_type", pa.string(), nullable=False),
    pa.field("tenant_id", pa.string(), nullable=False),
    pa.field("trace_id", pa.string(), nullable=False),
]


def test_arrow_schema_types():
    task = codec.default_codec().arrow_schema("task_event")
    assert list(task)[:6] == ENVELOPE_ARROW
    assert task.field("status").type == pa.string() and not task.field("status").nullable
    assert task.field("attempt").type == pa.int32()
    assert task.field("queue_wait_ms").type == pa.int64() and task.field("queue_wait_ms").nullable
    assert task.field("quality_score").type == pa.float64() and task.field("quality_score").nullable
    assert codec.default_codec().arrow_schema("llm_call").field("cache_hit").type == pa.bool_()
    alert = codec.default_codec().arrow_schema("alert")
    assert alert.field("details").type == pa.map_(pa.string(), pa.string())
    assert alert.field("window_start").type == pa.timestamp("ms", tz="UTC") and alert.field("window_start").nullable
    assert codec.default_codec().arrow_schema("inference_request").field("inputs").type == pa.list_(pa.string())
    result = codec.default_codec().arrow_schema("inference_result")
    assert result.field("embeddings").type == pa.list_(pa.list_(pa.float32()))
    assert result.field("compute_ms").type == pa.float64()


@pytest.mark.parametrize("event", sorted(SAMPLES))
def test_decode_batch_arrow(event):
    good = codec.encode(event, SAMPLES[event])
    arrow = codec.decode_batch_arrow([good, b"\x00", good], event)
    assert arrow.table.schema == codec.default_codec().arrow_schema(event)
    assert arrow.table.num_rows == 2
    assert [(f.index, f.error_class) for f in arrow.failures] == [(1, "BadMarker")]
    row = arrow.table.slice(0, 1).to_pylist()[0]
    assert row["event_id"] == SAMPLES[event]["event_id"]
    assert row["event_time"] == T0
    for name, value in SAMPLES[event].items():
        if name in ("event_id", "event_time"):
            continue
        if name == "details":
            assert dict(row[name]) == value
        else:
            # The sample embeddings are exact in float32, so equality holds for them too.
            assert row[name] == value, name


def test_decode_batch_arrow_of_only_failures_is_an_empty_typed_table():
    arrow = codec.decode_batch_arrow([b"nope"], "telemetry")
    assert arrow.table.num_rows == 0
    assert arrow.table.schema == codec.default_codec().arrow_schema("telemetry")
    assert len(arrow.failures) == 1


def test_an_int_past_32_bits_fails_its_message_alone():
    # fastavro reads any varint into an ``int`` field; Arrow's int32 cannot hold 2**40.
    writer = default_registry().current("llm_call")
    wide = copy.deepcopy(writer.schema)
    for field in wide["fields"]:
        if field["name"] == "input_tokens":
            field["type"] = "long"
    body = io.BytesIO()
    schemaless_writer(body, wide, {**SAMPLES["llm_call"], "input_tokens": 2**40})
    bad = MARKER + writer.fingerprint + body.getvalue()
    good = codec.encode("llm_call", SAMPLES["llm_call"])
    arrow = codec.decode_batch_arrow([good, bad, good, b"\x00"], "llm_call")
    assert arrow.table.num_rows == 2
    assert [(f.index, f.error_class) for f in arrow.failures] == [(1, "UndecodableBody"), (3, "BadMarker")]
    assert "does not fit its type" in arrow.failures[0].message
