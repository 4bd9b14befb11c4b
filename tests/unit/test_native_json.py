"""JSON events: the native decoder (native/src/json/) reads JSON objects as the Python reference
(connectors/kafka/jsonrecord.py, through :meth:`Codec.decode_batch_arrow`) reads them: the same
table, the same failure class and message, message by message, in batches that mix JSON, Avro
and garbage; and a JSON event's row equals the row of the same event sent as Avro.

The random cases come from one seed, printed at import and named in every assertion; set
``EZ_NATIVE_SEED`` to replay a run.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import shutil
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import Message

from connectors.kafka.codec import BadMarker, Codec, CodecError, InvalidJson
from connectors.kafka.jsonrecord import parse_timestamp
from connectors.kafka.native import NATIVE_DIR, NativeCodec, source_hash
from connectors.kafka.schemas import SCHEMAS_DIR, SchemaRegistry
from connectors.validation import ValueRules, check, screen
from tests.unit.native_cases import RecordMaker, assert_same, rows

SEED = int(os.environ.get("EZ_NATIVE_SEED") or random.SystemRandom().randrange(2**32))
print(f"tests/unit/test_native_json.py: EZ_NATIVE_SEED={SEED}")

EVENTS = ["alert", "inference_request", "inference_result", "llm_call", "llm_window", "task_event", "telemetry"]
#: What the native path refuses in an Avro message that fastavro reads (test_native_codec.py).
STRICTER = re.compile(r"enum symbol index -\d+|union branch -\d+|varint longer than 64 bits|negative block size|"
                      r"int out of the 32-bit range|body truncated \(\d+ bytes\) in a field .* skips|"
                      r"negative length -\d+, in a field the reader skips")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def rng_for(*parts: object) -> random.Random:
    return random.Random(f"{SEED}/json/" + "/".join(map(str, parts)))


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


@pytest.fixture(scope="module")
def native(codec: Codec) -> NativeCodec:
    return NativeCodec(codec)


# --- generating JSON events ----------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """``value`` with every NaN and infinity (which JSON cannot hold) made a finite number."""
    if isinstance(value, float) and not math.isfinite(value):
        return 0.0 if math.isnan(value) else math.copysign(1.7976931348623157e308, value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _iso(ms: int, rng: random.Random) -> str:
    """``ms`` as an RFC 3339 string at a random offset, sometimes with digits past the millisecond."""
    minutes = rng.choice([0, 0, 60, -300, 330, 14 * 60 - 1, -(23 * 60 + 59)])
    local = (_EPOCH + timedelta(milliseconds=ms)).astimezone(timezone(timedelta(minutes=minutes)))
    text = local.isoformat(timespec="milliseconds")
    text = text.replace("+00:00", rng.choice(["Z", "z", "+00:00", "-00:00"])) if minutes == 0 else text
    if rng.random() < 0.3:
        text = text[:10] + rng.choice("Tt ") + text[11:]
    if rng.random() < 0.3:  # digits past the millisecond are dropped
        text = re.sub(r"(\.\d{3})", lambda m: m.group(1) + str(rng.randrange(10**6)), text, count=1)
    return text


def json_event(codec: Codec, event: str, record: dict[str, Any], rng: random.Random) -> tuple[bytes, dict[str, Any]]:
    """``record`` as a JSON message, written in any of the ways the rules allow (optional fields
    left out, times as text, symbols the schema lacks, whitespace), and the record an Avro
    producer would write for the same event."""
    schema = codec.reader(event).schema
    record = _finite(record)
    avro = dict(record)
    obj: dict[str, Any] = {}
    for field in schema["fields"]:
        name, avro_type, value = field["name"], field["type"], record[field["name"]]
        if "default" in field and rng.random() < 0.3:
            avro[name] = field["default"]
            continue
        if isinstance(avro_type, dict) and avro_type.get("logicalType") == "timestamp-millis" \
                and 0 <= value <= _LAST_MS - 86_400_000 and rng.random() < 0.5:
            value = _iso(value, rng)
            assert parse_timestamp(value) == record[name], value
        if isinstance(avro_type, dict) and avro_type.get("type") == "enum" and "default" in avro_type \
                and rng.random() < 0.15:
            value = rng.choice(["zz_new_symbol", "", "OK", "ünknown"])
            avro[name] = avro_type["default"]
        obj[name] = value
    items = list(obj.items())
    rng.shuffle(items)
    text = json.dumps(dict(items), ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, None, 2]))
    return (rng.choice(["", "", " ", "\n\t "]) + text + rng.choice(["", "", "\n", "  "])).encode(), avro


def valid_events(codec: Codec, event: str, count: int, tag: str) -> list[tuple[bytes, bytes]]:
    """``count`` (JSON message, Avro message of the same event) pairs."""
    rng = rng_for(tag, event)
    records = RecordMaker(rng).records(codec.reader(event).schema, count)
    pairs = []
    for record in records:
        message, avro = json_event(codec, event, record, rng)
        pairs.append((message, codec.encode(event, avro)))
    return pairs


# --- (a) valid JSON: the reference's table, and the Avro path's -----------------------------------


@pytest.mark.parametrize("event", EVENTS)
def test_random_json_events_decode_to_the_table_of_the_same_events_as_avro(codec, native, event):
    pairs = valid_events(codec, event, 250, "valid")
    as_json, as_avro = [j for j, _ in pairs], [a for _, a in pairs]
    context = f"seed {SEED}, {event}"
    expected = codec.decode_batch_arrow(as_json, event)
    actual = native.decode_batch_arrow(as_json, event)
    assert not actual.failures, f"{context}: {actual.failures[:3]}"
    assert_same(expected, actual, context)
    avro = native.decode_batch_arrow(as_avro, event)
    assert not avro.failures, context
    assert rows(actual.table) == rows(avro.table), context
    assert actual.table.schema == codec.arrow_schema(event)


@pytest.mark.parametrize("event", EVENTS)
def test_one_json_message_decodes_to_the_record_of_the_same_event_as_avro(codec, event):
    # Codec.decode_message: what a consumer of single messages (the inference worker) reads.
    # Boundary values past what datetime holds fail decode() as Avro: as JSON, the same way.
    decoded = 0
    for k, (message, avro) in enumerate(valid_events(codec, event, 150, "single")):
        try:
            expected = codec.decode(avro, event)
        except CodecError as exc:
            with pytest.raises(type(exc)):
                codec.decode_message(message, event)
            continue
        assert codec.decode_message(message, event) == expected, f"seed {SEED}, {event} #{k}"
        assert codec.decode_message(avro, event) == expected
        decoded += 1
    assert decoded >= 30, f"seed {SEED}, {event}: {decoded} of 150 decoded"
    # Headers that say JSON make it JSON whatever its first byte; bad JSON names its field.
    with pytest.raises(InvalidJson, match="not JSON"):
        codec.decode_message(b"[1, 2", event, [("content-type", b"application/json; charset=utf-8")])
    with pytest.raises(InvalidJson, match="event_id"):
        codec.decode_message(b'{"event_id": 7}', event)
    with pytest.raises(BadMarker):
        codec.decode_message(b"not avro", event)


@pytest.mark.parametrize("event", EVENTS)
def test_json_and_avro_mixed_in_one_batch_keep_their_order(codec, native, event):
    rng = rng_for("mixed", event)
    pairs = valid_events(codec, event, 300, "mixed")
    batch, flagged = [], []
    for i, (as_json, as_avro) in enumerate(pairs):
        # Runs of each kind, so decoders switch both often and after long runs.
        use_json = (i // rng.choice([1, 1, 5, 40])) % 2 == 0
        batch.append(as_json if use_json else as_avro)
        if use_json and rng.random() < 0.2:
            flagged.append(i)
    context = f"seed {SEED}, {event}"
    actual = native.decode_batch_arrow(batch, event, flagged)
    assert_same(codec.decode_batch_arrow(batch, event, flagged), actual, context)
    assert not actual.failures, context
    assert rows(actual.table) == rows(native.decode_batch_arrow([a for _, a in pairs], event).table), context


def test_a_large_mixed_batch_keeps_order_and_indices_across_chunks(codec, native):
    event = "telemetry"
    pairs = valid_events(codec, event, 20_000, "large")
    batch: list[bytes | None] = [j if (i // 3000) % 2 else a for i, (j, a) in enumerate(pairs)]
    bad = [0, 2999, 3000, 8191, 8192, 12_345, 19_999]
    for index in bad:
        # A JSON message cut before its closing brace; an Avro one behind a brace.
        batch[index] = batch[index].rstrip()[:-1] if batch[index][:1] != b"\xc3" else b"{" + batch[index]
    expected, actual = codec.decode_batch_arrow(batch, event), native.decode_batch_arrow(batch, event)
    assert_same(expected, actual, f"seed {SEED}")
    assert [f.index for f in actual.failures] == bad
    assert {f.error_class for f in actual.failures} == {"InvalidJson"}


def test_fields_of_another_version_are_ignored_and_defaults_fill_those_left_out():
    registry = SchemaRegistry()
    newest = registry.versions("llm_call")[-1]
    old = Codec(registry, reader_versions={"llm_call": 1})
    new = Codec(registry)
    record = RecordMaker(rng_for("versions")).record(old.reader("llm_call").schema)
    record = _finite({**record, "event_time": 1_764_000_000_000, "provider": "openai"})
    extra = {f["name"]: 7 for f in registry.get("llm_call", newest).schema["fields"]
             if f["name"] not in record}
    assert extra, "v2 adds fields"
    with_new_fields = json.dumps({**record, **extra}).encode()
    for codec in (old, new):
        native = NativeCodec(codec)
        batch = [with_new_fields, json.dumps(record).encode()]
        actual = native.decode_batch_arrow(batch, "llm_call")
        assert not actual.failures, actual.failures
        assert_same(codec.decode_batch_arrow(batch, "llm_call"), actual, codec.reader("llm_call").label)
        table = actual.table
        if codec is new:  # v2 reads them, and the defaults where they are left out
            defaults = {f["name"]: f.get("default") for f in registry.get("llm_call").schema["fields"]}
            for name in extra:
                assert table[name].to_pylist() == [7, defaults[name]]
        else:
            assert not set(extra) & set(table.column_names)


def test_threads_share_a_decoder_on_mixed_batches(codec, native):
    pairs = valid_events(codec, "llm_call", 600, "threads")
    batch = [j if i % 3 else a for i, (j, a) in enumerate(pairs)]
    expected = rows(native.decode_batch_arrow(batch, "llm_call").table)
    results: list[list] = []

    def work() -> None:
        for _ in range(3):
            results.append(rows(native.decode_batch_arrow(batch, "llm_call").table))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 12 and all(r == expected for r in results)


# --- (b) invalid JSON: each rule names its field ---------------------------------------------------


def _base(codec: Codec) -> dict[str, Any]:
    """A valid LlmCall that passes the value rules too (numbers not negative, a recent time)."""
    schema = codec.reader("llm_call").schema
    record = _finite(RecordMaker(rng_for("base")).record(schema))
    record.update({f["name"]: {"int": 1, "long": 1, "double": 1.0}[f["type"]] for f in schema["fields"]
                   if f["type"] in ("int", "long", "double")})
    record.update(event_id="8b1f6c1e-2a43-4f7e-9a51-0c1d2e3f4a5b", event_time=1_764_000_000_000, task_id=None,
                  provider="openai", status="ok", input_tokens=12, output_tokens=3, cost_usd=0.5)
    return record


def _without(record: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != name}


INVALID = {
    # name: (change to the base record or raw bytes, expected text in the failure message)
    "a string for an int": ({"input_tokens": "12"}, 'input_tokens: expected int, got "12"'),
    "a fraction for an int": ({"input_tokens": 12.5}, "input_tokens: expected int, got 12.5"),
    "an exponent for an int": ({"output_tokens": 1e3}, "output_tokens: expected int, got 1000.0"),
    "-0 for an int": (b'"input_tokens": -0', "input_tokens: expected int, got -0.0"),
    "an int past 32 bits": ({"input_tokens": 2**31}, "input_tokens: 2147483648 is out of the int range"),
    "true for an int": ({"input_tokens": True}, "input_tokens: expected int, got true"),
    "null for an int": ({"output_tokens": None}, "output_tokens: expected int, got null"),
    "a string for a double": ({"cost_usd": "0.5"}, 'cost_usd: expected double, got "0.5"'),
    "a number for a boolean": ({"cache_hit": 1}, "cache_hit: expected boolean, got 1"),
    "a number for a string": ({"model": 4}, "model: expected string, got 4"),
    "a number for an optional string": ({"task_id": 5}, "task_id: expected string, got 5"),
    "an object for a string": ({"agent_id": {"a": 1}}, "agent_id: expected string, got an object"),
    "a number for a symbol": ({"provider": 3}, "provider: expected a symbol (string), got 3"),
    "not a UUID": ({"event_id": "8b1f6c1e2a434f7e9a510c1d2e3f4a5b"},
                   'event_id: not a UUID: "8b1f6c1e2a434f7e9a510c1d2e3f4a5b"'),
    "a UUID in braces": ({"event_id": "{8b1f6c1e-2a43-4f7e-9a51-0c1d2e3f4a5b}"}, "event_id: not a UUID"),
    "a number for a UUID": ({"event_id": 7}, "event_id: expected a UUID string, got 7"),
    "a time without an offset": ({"event_time": "2026-11-20T08:00:00"},
                                 'event_time: "2026-11-20T08:00:00" is not an ISO 8601 timestamp with an offset'),
    "a date only": ({"event_time": "2026-11-20"}, "is not an ISO 8601 timestamp with an offset"),
    "February 30th": ({"event_time": "2026-02-30T08:00:00Z"}, "is not an ISO 8601 timestamp with an offset"),
    "a fraction of a millisecond": ({"event_time": 1.5},
                                    "event_time: expected epoch milliseconds or an ISO 8601 string, got 1.5"),
    "milliseconds past a long": ({"event_time": 2**63}, "event_time: 9223372036854775808 is out of the long range"),
    "a long string quoted in part": ({"input_tokens": "x" * 100}, f'input_tokens: expected int, got "{"x" * 40}"…'),
    "a missing field": (lambda r: _without(r, "cost_usd"), "cost_usd: missing, and the field has no default"),
    "a missing UUID": (lambda r: _without(r, "event_id"), "event_id: missing, and the field has no default"),
    "an unknown field": ({"colour": "red"}, "colour: unknown field"),
    "a misspelt field": (lambda r: {**_without(r, "region"), "regoin": "eu"}, "regoin: unknown field"),
    "not JSON": (b'{"event_id": ', "not JSON"),
    "trailing text": (lambda r: json.dumps(r).encode() + b" {}", "not JSON"),
    "NaN": (b'"cost_usd": NaN', "not JSON"),
    "a double past the range": (b'"cost_usd": 1e400', "not JSON"),
    "a lone surrogate": (b'"agent_id": "\\ud800"', "not JSON"),
    "not UTF-8": (b'"agent_id": "\xff\xfe"', "not JSON"),
    "a control character": (b'"agent_id": "a\x01b"', "not JSON"),
    "an object with a header": ("[1, 2]", "expected a JSON object, got an array"),
    "Avro with a JSON header": ("avro", "not JSON"),
    "no value with a JSON header": (None, "no value"),
}


def _invalid_message(codec: Codec, change: Any) -> tuple[bytes | None, bool]:
    """The message of an INVALID case and whether its headers say JSON."""
    base = _base(codec)
    if change is None:
        return None, True
    if change == "avro":
        return codec.encode("llm_call", base), True
    if isinstance(change, str):
        return change.encode(), True
    if isinstance(change, bytes):  # a raw field replacing the cost or token field of the base text
        name = change.split(b'"')[1].decode()
        text = json.dumps(_without(base, name)).encode()
        return text[:-1] + b", " + change + b"}", False
    record = change(base) if callable(change) else {**base, **change}
    return (record if isinstance(record, bytes) else json.dumps(record).encode()), False


def test_each_invalid_json_fails_alone_and_names_its_field(codec, native):
    event = "llm_call"
    valid = [j for j, _ in valid_events(codec, event, len(INVALID), "around-invalid")]
    batch: list[bytes | None] = []
    flagged: list[int] = []
    where = {}
    for number, (name, (change, _)) in enumerate(INVALID.items()):
        batch.append(valid[number])
        message, header = _invalid_message(codec, change)
        where[len(batch)] = name
        if header:
            flagged.append(len(batch))
        batch.append(message)
    expected = codec.decode_batch_arrow(batch, event, flagged)
    actual = native.decode_batch_arrow(batch, event, flagged)
    assert_same(expected, actual, f"seed {SEED}")
    assert actual.table.num_rows == len(INVALID)  # every valid message between them decoded
    assert [f.index for f in actual.failures] == sorted(where)
    label = codec.reader(event).label
    for failure, reference in zip(actual.failures, expected.failures):
        name = where[failure.index]
        print(f"{name:>30}: {failure.message}")
        assert failure.error_class == "InvalidJson", name
        assert failure.message.startswith(f"JSON as {label}: "), (name, failure.message)
        assert INVALID[name][1] in failure.message, (name, failure.message)
        if "not JSON" not in failure.message:  # the parsers' own words differ; the rest is the same
            assert failure.message == reference.message, name


def test_an_unknown_symbol_without_a_default_fails_and_with_one_reads_as_the_default(tmp_path, codec):
    schema = json.loads((SCHEMAS_DIR / "llm_call" / "v1.avsc").read_text())
    del next(f for f in schema["fields"] if f["name"] == "status")["type"]["default"]
    (tmp_path / "llm_call").mkdir()
    (tmp_path / "llm_call" / "v1.avsc").write_text(json.dumps(schema))
    strict = Codec(SchemaRegistry(tmp_path))
    base = _without(_without(_without(_base(codec), "cache_read_tokens"), "cache_write_tokens"), "reasoning_tokens")
    batch = [json.dumps({**base, "status": "overloaded", "provider": "mistral"}).encode(),
             json.dumps({**base, "provider": "mistral"}).encode()]
    expected, actual = strict.decode_batch_arrow(batch, "llm_call"), NativeCodec(strict).decode_batch_arrow(batch, "llm_call")
    assert_same(expected, actual, "strict status")
    assert [(f.index, f.message) for f in actual.failures] == [
        (0, 'JSON as llm_call v1: status: unknown symbol "overloaded"')]
    assert actual.table["provider"].to_pylist() == ["other"]  # the enum's default, as Avro resolution reads it


def test_values_the_stores_cannot_hold_fail_the_value_rules_as_avro_ones_do(codec, native):
    base = _base(codec)
    rules = ValueRules(future_tolerance_ms=300_000, max_age_ms=30 * 86_400_000, max_string_bytes=1 << 20)
    batch = [json.dumps({**base, "input_tokens": -1}).encode(),
             json.dumps({**base, "event_time": "1960-01-01T00:00:00Z"}).encode(),
             json.dumps({**base, "event_time": "2025-11-24T16:00:00.000+00:00"}).encode()]
    table = native.decode_batch_arrow(batch, "llm_call").table
    invalid = check(table, "llm_call", [1_764_000_000_000] * 3, rules)
    assert [i.row for i in invalid] == [0, 1]
    assert "input_tokens -1 is negative" in invalid[0].message
    assert "event_time 1960-01-01T00:00:00.000Z is outside the range" in invalid[1].message


def test_screen_reads_a_message_as_json_when_its_headers_say_so(codec, native):
    base = _base(codec)
    rules = ValueRules(future_tolerance_ms=300_000, max_age_ms=30 * 86_400_000, max_string_bytes=1 << 20)

    def message(value: bytes | None, headers: list | None) -> Message:
        return Message(topic="agent.llm_calls", partition=0, offset=0, value=value, headers=headers,
                       timestamp=(1, 1_764_000_000_000))

    header = [("Content-Type", b"application/json; charset=utf-8")]
    messages = [message(codec.encode("llm_call", base), None),
                message(json.dumps(base).encode(), header),
                message(b"[" + json.dumps(base).encode() + b"]", header),
                message(json.dumps({**base, "input_tokens": -3}).encode(), [("content-type", b"text/plain")]),
                message(b"\n" + json.dumps(base).encode(), [("x-other", None)])]
    screened = screen(native, messages, "llm_call", rules)
    assert screened.positions.tolist() == [0, 1, 4]
    assert [(i, c) for i, c, _ in screened.failures] == [(2, "InvalidJson"), (3, "InvalidValue")]
    assert "expected a JSON object, got an array" in screened.failures[0][2]
    assert rows(screened.table)[0] == rows(screened.table)[1] == rows(screened.table)[2]


# --- (c) fuzzing: JSON, Avro and garbage, never a crash --------------------------------------------


def _decoded_alone(codec: Codec, message: bytes | None, header: bool, event: str) -> tuple[str, Any]:
    """What the reference makes of one message: ("row", row), ("failed", failure) or ("raised", exc)."""
    try:
        result = codec.decode_batch_arrow([message], event, [0] if header else [])
    except (pa.ArrowException, OverflowError) as exc:  # fastavro read an int past 32 bits
        return "raised", exc
    if result.failures:
        return "failed", result.failures[0]
    return "row", rows(result.table)[0]


def assert_agrees(codec: Codec, native: NativeCodec, batch: list, flagged: list[int], event: str,
                  context: str) -> Counter:
    """Decode ``batch`` natively at once; each message is decoded or failed, once, as the reference
    decodes it alone (its rows in order)."""
    actual = native.decode_batch_arrow(batch, event, flagged)
    failures = {f.index: f for f in actual.failures}
    assert sorted(failures) == [f.index for f in actual.failures], context
    assert actual.table.num_rows == len(batch) - len(failures), context
    decoded = iter(rows(actual.table))
    seen: Counter[str] = Counter()
    for index, message in enumerate(batch):
        kind, value = _decoded_alone(codec, message, index in flagged, event)
        got = failures.get(index)
        where = f"{context}, message {index}: {message!r:.300}"
        if kind == "failed":
            assert got is not None and got.error_class == value.error_class, f"{where}: {value}, native {got}"
            if got.error_class == "InvalidJson" and "not JSON" not in got.message:
                assert got.message == value.message, where
            seen["json failed" if got.error_class == "InvalidJson" else "failed"] += 1
        elif kind == "raised":
            assert got is not None and got.error_class == "UndecodableBody", f"{where}: {value!r}"
            seen["failed"] += 1
        elif got is None:
            assert next(decoded) == value, where
            seen["row"] += 1
        else:
            assert STRICTER.search(got.message), f"{where}: the reference decoded it, native: {got.message}"
            seen["stricter"] += 1
    return seen


def _edit(message: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(message)
    for kind, position, chunk in edits:
        at = position % (len(data) + 1)
        if kind == 0:
            data[at:at + len(chunk)] = chunk
        elif kind == 1:
            data[at:at] = chunk
        else:
            del data[at:at + len(chunk) + 1]
    return bytes(data)


def _replace_field(message: bytes, index: int, value: Any) -> bytes:
    """A valid JSON ``message`` with one field's value replaced (or a field added, or dropped)."""
    obj = json.loads(message)
    names = sorted(obj)
    choice = index % (len(names) + 2)
    if choice == len(names):
        obj["zz_unknown"] = value
    elif choice == len(names) + 1:
        del obj[names[index % len(names)]]
    else:
        obj[names[choice]] = value
    return json.dumps(obj).encode()


_POOLS: dict[str, list[tuple[bytes, bytes]]] = {}


@pytest.mark.parametrize("event", EVENTS)
def test_hypothesis_mixed_json_avro_and_garbage_never_crash_and_agree_with_the_reference(codec, native, event):
    """Property: a batch of any JSON text (valid events, edited ones, events with a field of any
    JSON value, any text), Avro messages (valid, edited) and any bytes, each maybe under a JSON
    content-type header, decodes in one call without a crash; every message is a row or one
    failure, as the reference decides for it alone. Seeded with EZ_NATIVE_SEED."""
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    pool = _POOLS.setdefault(event, valid_events(codec, event, 8, "hypothesis"))
    as_json, as_avro = [j for j, _ in pool], [a for _, a in pool]
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=20),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.sampled_from(["2026-11-20T08:00:00Z", "2026-11-20T08:00:00", "ok", "openai", "zz",
                                         "8b1f6c1e-2a43-4f7e-9a51-0c1d2e3f4a5b"]))
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                          max_leaves=8)
    edit = st.tuples(st.integers(0, 2), st.integers(0, 4096), st.binary(min_size=1, max_size=8))
    message = st.one_of(
        st.sampled_from(as_json),
        st.sampled_from(as_avro),
        st.builds(_replace_field, st.sampled_from(as_json), st.integers(0, 100), values),
        st.builds(_edit, st.sampled_from(as_json), st.lists(edit, min_size=1, max_size=3)),
        st.builds(_edit, st.sampled_from(as_avro), st.lists(edit, min_size=1, max_size=3)),
        st.builds(lambda v: json.dumps(v).encode(), values),
        st.builds(lambda b: b"{" + b, st.binary(max_size=100)),
        st.binary(max_size=200),
        st.none(),
    )

    @seed(SEED)
    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(message, st.integers(0, 9)), min_size=1, max_size=30))
    def check_batch(cases: list[tuple[bytes | None, int]]) -> None:
        batch = [m for m, _ in cases]
        flagged = [i for i, (_, h) in enumerate(cases) if h == 0]
        seen.update(assert_agrees(codec, native, batch, flagged, event, f"seed {SEED}, {event}, hypothesis"))

    seen: Counter[str] = Counter()
    check_batch()
    print(f"{event}: {dict(seen)}")
    assert seen["row"] > 0 and seen["json failed"] > 0 and seen["failed"] > 0, seen


# --- (d) the rules' own pieces ---------------------------------------------------------------------


def test_timestamps_parse_to_epoch_milliseconds():
    assert parse_timestamp("1970-01-01T00:00:00Z") == 0
    assert parse_timestamp("1970-01-01T01:00:00.5+01:00") == 500
    assert parse_timestamp("2026-11-20T08:00:00.123456Z") == 1_795_161_600_123
    assert parse_timestamp("1969-12-31 23:59:59.999z") == -1
    assert parse_timestamp("2024-02-29T00:00:00-00:00") == 1_709_164_800_000
    for text in ["2026-02-29T00:00:00Z", "2026-11-20T08:00:00", "2026-11-20T08:00:00.Z", "2026-11-20T24:00:00Z",
                 "2026-11-20T08:00:60Z", "2026-11-20T08:00:00+24:00", "0000-01-01T00:00:00Z", "2026-11-20",
                 "２０２６-11-20T08:00:00Z", "2026-11-20T08:00:00+0100"]:
        assert parse_timestamp(text) is None, text


def test_numbers_in_messages_are_quoted_as_python_writes_them(codec, native):
    base = _base(codec)
    values = [12.5, 1000.0, 1e16, 1e22, 1.5e-7, 0.0001, 0.00001234, 123456789012345678.0, 5e-324, -2.5e-5, -0.0,
              1.7976931348623157e308, 0.1 + 0.2]
    batch = [json.dumps({**base, "input_tokens": value}).encode() for value in values]
    expected, actual = codec.decode_batch_arrow(batch, "llm_call"), native.decode_batch_arrow(batch, "llm_call")
    assert_same(expected, actual, "floats")
    for value, failure, reference in zip(values, actual.failures, expected.failures):
        assert failure.message.endswith(f"input_tokens: expected int, got {value!r}"), failure.message
        assert failure.message == reference.message


def test_an_event_of_another_reader_reads_json_with_its_own_schema(tmp_path, codec):
    """The rules follow the reader schema: a v2 that adds a defaulted field and a symbol."""
    v1 = json.loads((SCHEMAS_DIR / "telemetry" / "v1.avsc").read_text())
    v2 = copy.deepcopy(v1)
    v2["fields"].append({"name": "weight", "type": "double", "default": 1.5})
    (tmp_path / "telemetry").mkdir()
    for number, schema in enumerate([v1, v2], start=1):
        (tmp_path / "telemetry" / f"v{number}.avsc").write_text(json.dumps(schema))
    registry = SchemaRegistry(tmp_path)
    record = _finite(RecordMaker(rng_for("telemetry-v2")).record(v1))
    batch = [json.dumps(record).encode(), json.dumps({**record, "weight": 2}).encode()]
    for reader in (1, 2):
        versioned = Codec(registry, reader_versions={"telemetry": reader})
        actual = NativeCodec(versioned).decode_batch_arrow(batch, "telemetry")
        assert_same(versioned.decode_batch_arrow(batch, "telemetry"), actual, f"v{reader}")
        assert not actual.failures
        if reader == 2:
            assert actual.table["weight"].to_pylist() == [1.5, 2.0]


def test_the_staleness_check_covers_the_json_sources(tmp_path):
    """A change to any file of native/src/json/ makes the built extension stale (`make native`)."""
    copy = shutil.copytree(NATIVE_DIR, tmp_path / "native", ignore=shutil.ignore_patterns("target"))
    sources = sorted((copy / "src" / "json").glob("*.rs"))
    assert {p.name for p in sources} >= {"mod.rs", "value.rs"}
    before = source_hash(copy)
    for source in sources:
        source.write_text(source.read_text() + "\n")
        assert source_hash(copy) != before, source.name
        before = source_hash(copy)
