"""Test material for the native decoder: random valid records of any schema, mutated messages,
a v2 of every event, and a comparison of decoded tables that holds for NaN and -0.0."""

from __future__ import annotations

import copy
import io
import json
import math
import random
import struct
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.validation import validate

from connectors.kafka.codec import HEADER_SIZE, ArrowBatch
from connectors.kafka.native import _plain_json
from connectors.kafka.schemas import SCHEMAS_DIR, SchemaVersion

INTS = [0, 1, -1, 63, 64, -64, -65, 8191, 8192, -2**31, 2**31 - 1]
LONGS = [*INTS, 2**31, -2**31 - 1, 2**53 + 1, -2**63, 2**63 - 1]
DOUBLES = [0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308]
FLOATS = [0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 1e-45, 1.1754943508222875e-38, 3.4028234663852886e38]
TEXTS = ["", "a", "héllo wörld ✓", "日本語のテキスト", "emoji 🚀👩‍💻", "nul \x00 inside", "\U0010ffff\ue000",
         "quotes ' \" \\ and\nnewlines\t"]


class RecordMaker:
    """Random valid records of an (expanded) Avro schema, boundary values favoured."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def record(self, schema: dict[str, Any], depth: int = 0) -> dict[str, Any]:
        return {f["name"]: self.value(f["type"], depth) for f in schema["fields"]}

    def records(self, schema: dict[str, Any], count: int) -> list[dict[str, Any]]:
        """``count`` records; the first ones take every symbol of every top-level enum in turn."""
        records = [self.record(schema) for _ in range(count)]
        for field in schema["fields"]:
            enum = _enum_of(field["type"])
            for i, symbol in enumerate(enum["symbols"] if enum else []):
                records[i % count][field["name"]] = symbol
        return records

    def size(self, depth: int) -> int:
        """Items of an array or map: large at the top, a few inside (arrays of arrays stay small)."""
        if depth:
            return self.rng.choice([0, 1, 2, 5])
        return self.rng.choice([0, 0, 1, 2, 3, 7, 64, self.rng.randrange(100, 1200)])

    def text(self, depth: int = 0) -> str:
        rng = self.rng
        kind = rng.randrange(6)
        if depth and kind == 2:
            kind = 0
        if kind == 0:
            return rng.choice(TEXTS)
        if kind == 1:
            return "".join(rng.choice(TEXTS) for _ in range(rng.randrange(1, 6)))
        if kind == 2:
            return "x" * rng.choice([127, 128, 16383, 16384, 100_000])
        if kind == 3:  # any code point but the surrogates, which UTF-8 cannot hold
            return "".join(chr(rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0x110000)]))
                           for _ in range(rng.randrange(1, 40)))
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz-_:/0123456789") for _ in range(rng.randrange(1, 40)))

    def value(self, avro_type: Any, depth: int = 0) -> Any:
        rng = self.rng
        if isinstance(avro_type, list):
            branch = rng.choice(avro_type)
            return None if branch == "null" else self.value(branch, depth)
        if isinstance(avro_type, dict):
            logical, kind = avro_type.get("logicalType"), avro_type["type"]
            if logical == "uuid":
                text = str(uuid.UUID(int=rng.getrandbits(128)))
                return text.upper() if rng.random() < 0.2 else text
            if logical == "timestamp-millis":
                return rng.choice([*LONGS, rng.randrange(-2**63, 2**63), 1_764_000_000_000 + rng.randrange(10**9)])
            if kind == "enum":
                return rng.choice(avro_type["symbols"])
            if kind == "array":
                return [self.value(avro_type["items"], depth + 1) for _ in range(self.size(depth))]
            if kind == "map":
                return {self.text(1): self.value(avro_type["values"], depth + 1) for _ in range(self.size(depth))}
            if kind == "record":
                return self.record(avro_type, depth + 1)
            return self.value(kind, depth)
        if avro_type == "string":
            return self.text(depth)
        if avro_type == "int":
            return rng.choice([*INTS, rng.randrange(-2**31, 2**31)])
        if avro_type == "long":
            return rng.choice([*LONGS, rng.randrange(-2**63, 2**63)])
        if avro_type == "double":
            return rng.choice([*DOUBLES, rng.uniform(-1e9, 1e9)])
        if avro_type == "float":
            return rng.choice([*FLOATS, struct.unpack("<f", struct.pack("<f", rng.uniform(-1e6, 1e6)))[0]])
        if avro_type == "boolean":
            return rng.random() < 0.5
        raise AssertionError(f"no generator for {avro_type!r}")


def _enum_of(avro_type: Any) -> dict[str, Any] | None:
    for t in avro_type if isinstance(avro_type, list) else [avro_type]:
        if isinstance(t, dict) and t.get("type") == "enum":
            return t
    return None


def mutations(rng: random.Random, message: bytes, others: list[bytes]) -> list[bytes | None]:
    """Broken variants of a valid ``message``: truncated, bit-flipped, overwritten, extended,
    a random body behind its header, another message's body behind its header, random bytes."""
    out: list[bytes | None] = [None, b"", bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))]
    out += [message[:n] for n in sorted(rng.sample(range(len(message)), min(12, len(message))))]
    for _ in range(24):
        data = bytearray(message)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        out.append(bytes(data))
    for _ in range(12):
        data = bytearray(message)
        data[rng.randrange(HEADER_SIZE, len(data))] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, rng.getrandbits(8)])
        out.append(bytes(data))
    out += [message + bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 1, 2, 9]))) for _ in range(4)]
    out += [message[:HEADER_SIZE] + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200))) for _ in range(8)]
    out += [message[:HEADER_SIZE] + rng.choice(others)[HEADER_SIZE:] for _ in range(4)]
    return out


def plain_parsed(version: SchemaVersion) -> dict[str, Any]:
    """fastavro's parse of ``version`` without logical types (timestamps as longs, UUIDs as text)."""
    return parse_schema(json.loads(_plain_json(version)))


def not_written_by_fastavro(version: SchemaVersion, message: bytes) -> bool:
    """Whether fastavro, writing what it reads of ``message``, would write other bytes or refuse.

    True for bytes that are not valid Avro but that fastavro still reads: a negative enum index,
    a varint longer than needed, an ``int`` past 32 bits (its writer takes it, its validator not).
    """
    plain = plain_parsed(version)
    try:
        record = schemaless_reader(io.BytesIO(message[HEADER_SIZE:]), plain, None)
        buffer = io.BytesIO()
        schemaless_writer(buffer, plain, record)
    except Exception:  # fastavro fails these in many exception types
        return True
    return not validate(record, plain, raise_errors=False) or message[HEADER_SIZE:] != buffer.getvalue()


def v2_schemas(root: Path) -> Path:
    """A schemas folder holding every committed v1 and a v2 of each event, which adds an optional
    field and a defaulted one, puts a new symbol first in each enum, drops ``region`` from
    task_event, and widens telemetry's ``error_count`` from int to long (so v2 -> v1 cannot
    resolve)."""
    for folder in sorted(p for p in SCHEMAS_DIR.iterdir() if p.is_dir()):
        v1 = json.loads((folder / "v1.avsc").read_text())
        v2 = copy.deepcopy(v1)
        v2["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
        v2["fields"].append({"name": "weight", "type": "double", "default": 1.5})
        for field in v2["fields"]:
            enum = _enum_of(field["type"])
            if enum:
                enum["symbols"].insert(0, "new_symbol")
            if folder.name == "telemetry" and field["name"] == "error_count":
                field["type"] = "long"
        if folder.name == "task_event":
            v2["fields"] = [f for f in v2["fields"] if f["name"] != "region"]
        target = root / folder.name
        target.mkdir(parents=True)
        (target / "v1.avsc").write_text(json.dumps(v1))
        (target / "v2.avsc").write_text(json.dumps(v2))
    return root


def rows(table: pa.Table) -> list[Any]:
    """The rows of ``table``, timestamps as epoch ms (any int64 is one) and floats made comparable:
    NaN equal to NaN, -0.0 unequal to 0.0."""
    plain = pa.schema([f.with_type(pa.int64()) if pa.types.is_timestamp(f.type) else f for f in table.schema])
    return [_comparable(row) for row in table.cast(plain).to_pylist()]


def _comparable(value: Any) -> Any:
    if isinstance(value, float):
        return ("nan",) if math.isnan(value) else (value, math.copysign(1.0, value))
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_comparable(v) for v in value)
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def assert_same(expected: ArrowBatch, actual: ArrowBatch, context: str) -> None:
    """Same schema, same rows in the same order, the same failure class for the same messages."""
    assert actual.table.schema.equals(expected.table.schema, check_metadata=True), context
    assert [(f.index, f.error_class) for f in actual.failures] == \
        [(f.index, f.error_class) for f in expected.failures], context
    assert actual.table.num_rows == expected.table.num_rows, context
    assert actual.table.equals(expected.table) or rows(actual.table) == rows(expected.table), context
