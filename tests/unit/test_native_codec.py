"""The native decoder (connectors/kafka/native.py over native/) equals the fastavro path of
:meth:`Codec.decode_batch_arrow`: the same tables and, message by message, the same failure class.

The random cases come from one seed, printed at import and named in every assertion; set
``EZ_NATIVE_SEED`` to replay a run.
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import re
import threading
from collections import Counter

import pyarrow as pa
import pytest
from fastavro import schemaless_reader, schemaless_writer

from connectors.errors import ConfigError
from connectors.kafka import native as native_module
from connectors.kafka.codec import HEADER_SIZE, MARKER, Codec
from connectors.kafka.native import NativeCodec
from connectors.kafka.schemas import SCHEMAS_DIR, SchemaRegistry
from tests.unit.native_cases import (
    RecordMaker,
    assert_same,
    mutations,
    not_written_by_fastavro,
    plain_parsed,
    rows,
    v2_schemas,
)

SEED = int(os.environ.get("EZ_NATIVE_SEED") or random.SystemRandom().randrange(2**32))
print(f"tests/unit/test_native_codec.py: EZ_NATIVE_SEED={SEED}")

EVENTS = ["alert", "inference_request", "inference_result", "llm_call", "llm_window", "task_event", "telemetry"]
#: What the native path refuses that fastavro reads (see connectors/kafka/native.py).
STRICTER = re.compile(r"enum symbol index -\d+|union branch -\d+|varint longer than 64 bits|negative block size|"
                      r"int out of the 32-bit range|body truncated \(\d+ bytes\) in a field .* skips|"
                      r"negative length -\d+, in a field the reader skips")


def rng_for(*parts: object) -> random.Random:
    return random.Random(f"{SEED}/" + "/".join(map(str, parts)))


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


@pytest.fixture(scope="module")
def native(codec: Codec) -> NativeCodec:
    return NativeCodec(codec)


@pytest.fixture(scope="module")
def v2_registry(tmp_path_factory: pytest.TempPathFactory) -> SchemaRegistry:
    return SchemaRegistry(v2_schemas(tmp_path_factory.mktemp("schemas")))


def records(codec: Codec, event: str, count: int, tag: str, version: int | None = None) -> list[bytes]:
    schema = codec.registry.get(event, version).schema
    return [codec.encode(event, r, version) for r in RecordMaker(rng_for(tag, event, version)).records(schema, count)]


# --- (a) valid records: the same table -------------------------------------------------------


@pytest.mark.parametrize("event", EVENTS)
def test_random_records_decode_to_the_same_table(codec, native, event):
    messages = records(codec, event, 300, "records")
    expected, actual = codec.decode_batch_arrow(messages, event), native.decode_batch_arrow(messages, event)
    assert not expected.failures, f"seed {SEED}"
    assert_same(expected, actual, f"seed {SEED}, {event}")
    assert actual.table.schema == codec.arrow_schema(event)


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("reader_version", [1, 2])
def test_versions_mixed_in_one_batch_resolve_as_fastavro_resolves_them(v2_registry, event, reader_version):
    codec = Codec(v2_registry, reader_versions={event: reader_version})
    native = NativeCodec(codec)
    messages = records(codec, event, 150, "versions", 1) + records(codec, event, 150, "versions", 2)
    rng_for("shuffle", event, reader_version).shuffle(messages)
    expected, actual = codec.decode_batch_arrow(messages, event), native.decode_batch_arrow(messages, event)
    context = f"seed {SEED}, {event} read as v{reader_version}"
    assert_same(expected, actual, context)
    from_v2 = {i for i, m in enumerate(messages) if m[2:HEADER_SIZE] == v2_registry.get(event, 2).fingerprint}
    if event == "telemetry" and reader_version == 1:  # error_count: long does not narrow to int
        assert {f.index for f in actual.failures} == from_v2, context
        assert {f.error_class for f in actual.failures} == {"UndecodableBody"}, context
        return
    assert not actual.failures, context
    table = actual.table
    if reader_version == 2:  # v1 rows take the new fields' defaults
        assert table["note"].null_count >= len(messages) - len(from_v2), context
        assert pa.compute.sum(pa.compute.equal(table["weight"], 1.5)).as_py() >= len(messages) - len(from_v2)
    for field in codec.reader(event).schema["fields"]:
        if isinstance(field["type"], dict) and field["type"]["type"] == "enum":
            values = set(table[field["name"]].to_pylist())
            # v2 writes every symbol, new_symbol included; v1 reads it as its default.
            assert ("new_symbol" in values) == (reader_version == 2), context
            assert values <= set(field["type"]["symbols"]), context


def test_a_symbol_the_reader_cannot_resolve_fails_its_message_only(tmp_path):
    v1 = json.loads((SCHEMAS_DIR / "llm_call" / "v1.avsc").read_text())
    status = next(f for f in v1["fields"] if f["name"] == "status")["type"]
    del status["default"]  # so a symbol v1 lacks cannot be read as v1
    v2 = copy.deepcopy(v1)
    next(f for f in v2["fields"] if f["name"] == "status")["type"]["symbols"].append("new_symbol")
    (tmp_path / "llm_call").mkdir()
    for number, schema in enumerate([v1, v2], start=1):
        (tmp_path / "llm_call" / f"v{number}.avsc").write_text(json.dumps(schema))
    codec = Codec(SchemaRegistry(tmp_path), reader_versions={"llm_call": 1})
    maker = RecordMaker(rng_for("unresolvable"))
    cases = [(codec.encode("llm_call", r, 1), False) for r in maker.records(v1, 150)]
    for i, record in enumerate(maker.records(v2, 150)):
        record["status"] = "new_symbol" if i % 7 == 0 else record["status"]
        cases.append((codec.encode("llm_call", record, 2), record["status"] == "new_symbol"))
    rng_for("unresolvable-order").shuffle(cases)
    batch = [message for message, _ in cases]
    expected, actual = codec.decode_batch_arrow(batch, "llm_call"), NativeCodec(codec).decode_batch_arrow(batch, "llm_call")
    assert_same(expected, actual, f"seed {SEED}")
    # arrow-avro finds these while decoding, halfway through a row: the rows before still count.
    assert [f.index for f in actual.failures] == [i for i, (_, bad) in enumerate(cases) if bad]
    assert all("not resolvable" in f.message for f in actual.failures), actual.failures[0]


# --- (b) broken messages: the same class, message by message ---------------------------------


def reference(codec: Codec, message: bytes | None, event: str) -> tuple[str, object]:
    """What the fastavro path makes of one message: ("row", row), ("failed", class) or ("raised", exc)."""
    try:
        result = codec.decode_batch_arrow([message], event)
    except (pa.ArrowException, OverflowError) as exc:  # an int past 32 bits fails its table
        return "raised", exc
    if result.failures:
        return "failed", result.failures[0].error_class
    return "row", rows(result.table)[0]


def assert_agrees_per_message(codec: Codec, native: NativeCodec, batch: list, event: str, context: str) -> dict:
    """Decode ``batch`` natively at once, compare each message with the fastavro path alone."""
    actual = native.decode_batch_arrow(batch, event)
    failures = {f.index: f for f in actual.failures}
    assert sorted(failures) == [f.index for f in actual.failures], context  # one each, in order
    assert actual.table.num_rows == len(batch) - len(failures), context
    decoded = iter(rows(actual.table))
    seen = {"row": 0, "failed": 0, "raised": 0, "stricter": 0}
    for index, message in enumerate(batch):
        kind, value = reference(codec, message, event)
        got = failures.get(index)
        where = f"{context}, message {index}: {message!r:.300}"
        if kind == "failed":
            assert got is not None and got.error_class == value, f"{where}: fastavro {value}, native {got}"
        elif kind == "raised":
            assert got is not None and got.error_class == "UndecodableBody", f"{where}: fastavro raised {value!r}"
        elif got is None:
            assert next(decoded) == value, where
        else:
            # fastavro read bytes that are not valid Avro; the native path refuses them.
            assert STRICTER.search(got.message), f"{where}: fastavro decoded it, native: {got.message}"
            writer = codec.registry.by_fingerprint(message[2:HEADER_SIZE])
            assert not_written_by_fastavro(writer, message), f"{where}: valid Avro, yet native: {got.message}"
            kind = "stricter"
        seen[kind] += 1
    return seen


@pytest.mark.parametrize("event", EVENTS)
def test_broken_messages_fail_as_fastavro_fails_them(codec, native, event):
    rng = rng_for("fuzz", event)
    valid = records(codec, event, 25, "fuzz")
    others = [m for e in EVENTS if e != event for m in records(codec, e, 2, "fuzz-other")]
    batch: list[bytes | None] = [*valid, *others]
    for message in valid:
        batch += mutations(rng, message, valid + others)
    rng.shuffle(batch)
    seen = assert_agrees_per_message(codec, native, batch, event, f"seed {SEED}, {event}")
    print(f"{event}: {seen}")
    assert seen["row"] >= len(valid) and seen["failed"] > len(batch) // 2


@pytest.mark.parametrize("reader_version", [1, 2])
def test_broken_messages_of_two_versions_fail_as_fastavro_fails_them(v2_registry, reader_version):
    rng = rng_for("fuzz-versions", reader_version)
    for event in ["alert", "llm_call", "task_event", "telemetry"]:
        codec = Codec(v2_registry, reader_versions={event: reader_version})
        valid = records(codec, event, 10, "fuzz-v1", 1) + records(codec, event, 10, "fuzz-v2", 2)
        batch: list[bytes | None] = list(valid)
        for message in valid:
            batch += mutations(rng, message, valid)
        rng.shuffle(batch)
        assert_agrees_per_message(codec, NativeCodec(codec), batch, event, f"seed {SEED}, {event} as v{reader_version}")


_HYPOTHESIS_VALID: dict[str, list[bytes]] = {}


def _edit(message: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """``message`` with each (kind, position, data) edit applied: 0 overwrites, 1 inserts, 2 cuts."""
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


@pytest.mark.parametrize("event", EVENTS)
def test_hypothesis_edited_messages_never_crash_and_fail_as_fastavro_fails_them(codec, native, event):
    """Property: whatever hypothesis does to valid messages (overwrite, insert, cut bytes; a body
    of its own behind a valid header; any bytes at all), the native decoder classifies each message
    as fastavro does, in one batch, without crashing. Seeded with EZ_NATIVE_SEED."""
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    valid = _HYPOTHESIS_VALID.setdefault(event, records(codec, event, 8, "hypothesis"))
    edit = st.tuples(st.integers(0, 2), st.integers(0, 4096), st.binary(min_size=1, max_size=16))
    message = st.one_of(
        st.builds(_edit, st.sampled_from(valid), st.lists(edit, min_size=1, max_size=4)),
        st.builds(lambda m, body: m[:HEADER_SIZE] + body, st.sampled_from(valid), st.binary(max_size=400)),
        st.binary(max_size=300),
        st.sampled_from(valid),
    )

    @seed(SEED)
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(message, min_size=1, max_size=40))
    def check(batch: list[bytes]) -> None:
        seen.update(assert_agrees_per_message(codec, native, batch, event, f"seed {SEED}, {event}, hypothesis"))

    seen: Counter[str] = Counter()
    check()
    print(f"{event}: {dict(seen)}")
    assert seen["row"] > 0 and seen["failed"] > seen["row"], seen  # both paths were exercised


# --- (c) each failure class, with the batch around it decoding -------------------------------


def written(codec: Codec, event: str, record: dict) -> bytes:
    """``record``'s message written by fastavro alone, without the codec's checks (which refuse
    a bad UUID)."""
    buffer = io.BytesIO()
    schemaless_writer(buffer, plain_parsed(codec.reader(event)), record)
    return MARKER + codec.reader(event).fingerprint + buffer.getvalue()


def llm_call(codec: Codec) -> tuple[dict, bytes]:
    """An LlmCall whose bytes are known around the fields the cases below break."""
    good = records(codec, "llm_call", 1, "crafted")[0]
    record = schemaless_reader(io.BytesIO(good[HEADER_SIZE:]), plain_parsed(codec.reader("llm_call")), None)
    record.update(agent_id="AGENT-7", call_id="CALL", task_id=None, provider="openai", model="gpt",
                  api_key_alias="KEY", input_tokens=5, region="REGION-Q")
    return record, codec.encode("llm_call", record)


def broken(message: bytes, old: bytes, new: bytes) -> bytes:
    assert message.count(old) == 1, old
    return message.replace(old, new)


def test_each_failure_class_fails_its_own_message_only(codec, native):
    event = "llm_call"
    valid = records(codec, event, 12, "classes")
    record, good = llm_call(codec)
    # task_id's null branch (0), provider openai (index 1: zigzag 2), model "gpt" (length 3: 6).
    enum_at = b"CALL\x00\x02\x06gpt"
    cases = {
        "no value": (None, "BadMarker"),
        "empty": (b"", "BadMarker"),
        "shorter than the header": (good[:9], "BadMarker"),
        "another marker": (b"\xc3\x02" + good[2:], "BadMarker"),
        # Read as a JSON event (tests/unit/test_native_json.py), which lacks the other fields.
        "JSON": (b'{"event_id": "8b1f6c1e-2a43-4f7e-9a51-0c1d2e3f4a5b", "agent_id": "a"}', "InvalidJson"),
        "unknown fingerprint": (good[:2] + bytes(8) + good[HEADER_SIZE:], "UnknownSchema"),
        "another event": (records(codec, "telemetry", 1, "classes-other")[0], "WrongEventType"),
        "header only": (good[:HEADER_SIZE], "UndecodableBody"),
        "truncated": (good[:-3], "UndecodableBody"),
        "trailing bytes": (good + b"\x00", "UndecodableBody"),
        "not a UUID": (written(codec, event, {**record, "event_id": "not-a-uuid"}), "UndecodableBody"),
        "UUID in braces": (codec.encode(event, {**record, "event_id": "{" + record["event_id"] + "}"}),
                           "UndecodableBody"),
        "UUID without hyphens": (codec.encode(event, {**record, "event_id": record["event_id"].replace("-", "")}),
                                 "UndecodableBody"),
        "not UTF-8": (broken(good, b"AGENT-7", b"AGENT\xff\xfe"), "UndecodableBody"),
        "negative length": (broken(good, b"\x0eAGENT-7", b"\x0dAGENT-7"), "UndecodableBody"),
        "enum index past the symbols": (broken(good, enum_at, b"CALL\x00\x7e\x06gpt"), "UndecodableBody"),
        "union branch past the union": (broken(good, enum_at, b"CALL\x04\x02\x06gpt"), "UndecodableBody"),
        "garbage body": (good[:HEADER_SIZE] + b"\xff" * 40, "UndecodableBody"),
    }
    batch: list[bytes | None] = []
    expected_classes = {}
    for number, (name, (bad, error_class)) in enumerate(cases.items()):
        batch.append(valid[number % len(valid)])
        expected_classes[len(batch)] = (name, error_class)
        batch.append(bad)
    expected, actual = codec.decode_batch_arrow(batch, event), native.decode_batch_arrow(batch, event)
    assert_same(expected, actual, f"seed {SEED}")
    assert {f.index: f.error_class for f in actual.failures} == {i: c for i, (_, c) in expected_classes.items()}
    assert actual.table.num_rows == len(cases)  # every valid message between them decoded
    for failure in actual.failures:
        print(f"{expected_classes[failure.index][0]:>28}: {failure.message}")


def test_valid_but_unusual_encodings_read_as_fastavro_reads_them(codec, native):
    record, good = llm_call(codec)
    key_then_tokens = b"\x06KEY\x0a"  # api_key_alias "KEY", input_tokens 5 (zigzag 10)
    batch = [
        broken(good, key_then_tokens, b"\x06KEY\x8a\x80\x80\x80\x00"),  # 5 in five bytes
        broken(good, key_then_tokens, b"\x06KEY\x8a" + b"\x80" * 8 + b"\x00"),  # in ten, the most
        good,
    ]
    expected, actual = codec.decode_batch_arrow(batch, "llm_call"), native.decode_batch_arrow(batch, "llm_call")
    assert not actual.failures
    assert_same(expected, actual, f"seed {SEED}")
    assert actual.table["input_tokens"].to_pylist() == [5, 5, 5]


def test_bytes_only_fastavro_reads_are_failures(codec, native):
    """The documented differences: bytes that are not valid Avro, which fastavro still reads."""
    record, good = llm_call(codec)
    key_then_tokens = b"\x06KEY\x0a"
    alert = records(codec, "alert", 1, "lenient")[0]
    alert_record = schemaless_reader(io.BytesIO(alert[HEADER_SIZE:]), plain_parsed(codec.reader("alert")), None)
    details = codec.encode("alert", {**alert_record, "details": {"k": "v"}})
    cases = {
        # fastavro takes symbols[-1] for index -1.
        "negative enum index": ("llm_call", broken(good, b"CALL\x00\x02\x06gpt", b"CALL\x00\x01\x06gpt"), "row"),
        # fastavro shifts past 64 bits and reads 5.
        "11-byte varint": ("llm_call", broken(good, key_then_tokens, b"\x06KEY\x8a" + b"\x80" * 9 + b"\x00"), "row"),
        # fastavro reads 2**31 into an int; the fastavro path's table then fails that message alone.
        "int past 32 bits": ("llm_call", broken(good, key_then_tokens, b"\x06KEY\x80\x80\x80\x80\x10"), "failed"),
        # A negative count (-1) must be followed by the block's size; fastavro ignores it (-1).
        "negative block size": ("alert", broken(details, b"\x02\x02k\x02v\x00", b"\x01\x01\x02k\x02v\x00"), "row"),
    }
    for name, (event, bad, fastavro_does) in cases.items():
        assert reference(codec, bad, event)[0] == fastavro_does, name
        failure = native.decode_batch_arrow([bad], event).failures[0]
        assert failure.error_class == "UndecodableBody" and STRICTER.search(failure.message), (name, failure)
        print(f"{name:>20}: {failure.message}")


def test_duplicate_map_keys_and_negative_block_counts_read_as_fastavro_reads_them(codec, native):
    event = "alert"
    good = records(codec, event, 1, "maps")[0]
    record = schemaless_reader(io.BytesIO(good[HEADER_SIZE:]), plain_parsed(codec.reader(event)), None)
    message = codec.encode(event, {**record, "details": {"k1": "a", "k2": "b", "k3": "c"}})
    duplicate = message.replace(b"\x04k3", b"\x04k1")
    entries = b"\x04k1\x02a\x04k2\x02b\x04k3\x02c"
    negative = message.replace(b"\x06" + entries + b"\x00", b"\x05" + bytes([2 * len(entries)]) + entries + b"\x00")
    assert negative != message
    batch = [duplicate, negative, message]
    expected, actual = codec.decode_batch_arrow(batch, event), native.decode_batch_arrow(batch, event)
    assert_same(expected, actual, f"seed {SEED}")
    assert actual.table["details"].to_pylist()[0] == [("k1", "c"), ("k2", "b")]


def test_a_large_batch_keeps_order_and_indices_across_chunks(codec, native):
    event = "telemetry"
    batch: list[bytes | None] = records(codec, event, 20_000, "large")
    for index in (0, 8191, 8192, 12_345, 19_999):
        batch[index] = batch[index][:-1]
    record = schemaless_reader(io.BytesIO(batch[1][HEADER_SIZE:]), plain_parsed(codec.reader(event)), None)
    batch[17_000] = written(codec, event, {**record, "event_id": "x" * 36})
    expected, actual = codec.decode_batch_arrow(batch, event), native.decode_batch_arrow(batch, event)
    assert_same(expected, actual, f"seed {SEED}")
    assert [f.index for f in actual.failures] == [0, 8191, 8192, 12_345, 17_000, 19_999]


def test_an_empty_batch_is_an_empty_table(codec, native):
    for event in EVENTS:
        assert_same(codec.decode_batch_arrow([], event), native.decode_batch_arrow([], event), event)


def test_threads_share_a_decoder(codec, native):
    batch = records(codec, "llm_call", 2000, "threads")
    expected = rows(codec.decode_batch_arrow(batch, "llm_call").table)
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


def test_a_message_that_is_not_bytes_is_a_type_error(native):
    with pytest.raises(TypeError, match="message 1 is str"):
        native.decode_batch_arrow([None, "text"], "llm_call")


def test_an_unknown_event_is_a_config_error(native):
    with pytest.raises(ConfigError, match="no schema for event 'nope'"):
        native.decode_batch_arrow([], "nope")


def test_a_missing_or_stale_extension_names_the_command_that_builds_it(monkeypatch):
    native_module.load_extension.cache_clear()
    try:
        monkeypatch.setattr(native_module, "source_hash", lambda: "0" * 64)
        with pytest.raises(ConfigError, match="stale.*`make native`"):
            NativeCodec()
        monkeypatch.setattr(native_module.importlib, "import_module", _no_module)
        with pytest.raises(ConfigError, match="not built.*`make native`"):
            NativeCodec()
    finally:
        native_module.load_extension.cache_clear()


def test_the_extension_is_built_from_the_checkout():
    assert native_module.load_extension().SOURCE_HASH == native_module.source_hash()


def _no_module(name: str):
    raise ModuleNotFoundError(f"No module named {name!r}")
