"""Avro single-object encoding of the events, and batch decoding to records or Arrow tables.

A message is, per the Avro specification: the marker ``C3 01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary body.
The fingerprint lets a consumer find the writer version and resolve it to the version it reads,
so producers and consumers upgrade independently (see :mod:`connectors.kafka.compat`). The batch
decoders also read JSON objects from any Kafka client (:mod:`connectors.kafka.jsonrecord`).

Every error raised for a message is a :class:`~connectors.errors.TerminalError`: the bytes are
wrong and retrying cannot help, so the message belongs in its DLQ. Batch decoding never stops on
a bad message; it reports it as a :class:`Failure` and goes on.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from connectors.errors import TerminalError
from connectors.kafka.schemas import SchemaRegistry, SchemaVersion, default_registry

if TYPE_CHECKING:
    import pyarrow as pa

MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8


class CodecError(TerminalError):
    """An event could not be encoded or a message could not be decoded."""


class InvalidEvent(CodecError):
    """The record does not match its event schema; the message names the field and why."""


class BadMarker(CodecError):
    """The message is not Avro single-object encoded: too short, or no ``C3 01`` marker."""


class UnknownSchema(CodecError):
    """The message's writer-schema fingerprint matches no known schema version."""


class WrongEventType(CodecError):
    """The message holds another event than the one its topic carries."""


class UndecodableBody(CodecError):
    """The body is truncated, malformed, has trailing bytes or cannot be resolved to the reader."""


class InvalidJson(CodecError):
    """A JSON message is no JSON object or breaks its event's schema; the message names the field
    (the rules: :mod:`connectors.kafka.jsonrecord`)."""


@dataclass(frozen=True)
class Failure:
    """A message of a batch that could not be decoded."""

    #: Position of the message in the batch.
    index: int
    #: Name of the :class:`CodecError` subclass, e.g. ``UnknownSchema`` (a DLQ header value).
    error_class: str
    message: str


@dataclass(frozen=True)
class DecodedBatch:
    """The decoded records of a batch, in message order, and the messages that failed."""

    records: list[dict[str, Any]]
    failures: list[Failure]


@dataclass(frozen=True)
class ArrowBatch:
    """The decoded records of a batch as one Arrow table, and the messages that failed."""

    table: pa.Table
    failures: list[Failure]


class Codec:
    """Encodes and decodes the events of a :class:`SchemaRegistry`; build once, reuse.

    :param registry: the schemas; the repository's ``schemas/`` by default.
    :param reader_versions: event -> version to decode into, for events that must not read into
        their latest version yet (a consumer that knows a new writer version but is not upgraded).
    """

    def __init__(
        self, registry: SchemaRegistry | None = None, reader_versions: Mapping[str, int] | None = None
    ) -> None:
        self.registry = registry or default_registry()
        self._readers = {event: self.registry.current(event) for event in self.registry.events}
        for event, version in (reader_versions or {}).items():
            self._readers[event] = self.registry.get(event, version)
        self._arrow_schemas: dict[str, pa.Schema] = {}

    def reader(self, event: str) -> SchemaVersion:
        """The schema version ``event`` is decoded into."""
        if event not in self._readers:
            self.registry.get(event)  # raises the ConfigError that lists the known events
        return self._readers[event]

    def encode(self, event: str, record: Mapping[str, Any], version: int | None = None) -> bytes:
        """One single-object encoded message of ``record``, written with ``version`` (current by default).

        Nullable fields may be left out. ``event_id`` may be a :class:`uuid.UUID` or its string,
        timestamps a timezone-aware :class:`~datetime.datetime` or epoch milliseconds.

        :raises InvalidEvent: the record does not match the schema (the message names the field).
        """
        writer = self.registry.get(event, version)
        _validate(writer, record)
        buffer = io.BytesIO()
        buffer.write(MARKER)
        buffer.write(writer.fingerprint)
        schemaless_writer(buffer, writer.parsed, record)
        return buffer.getvalue()

    def decode(self, data: bytes | None, event: str | None = None) -> tuple[str, dict[str, Any]]:
        """The event name and record of one message, resolved from its writer version to the reader's.

        Values come back as fastavro reads them: ``event_id`` a :class:`uuid.UUID`, timestamps
        UTC :class:`~datetime.datetime`; an enum symbol unknown to the reader as the enum's default.

        :param event: the event the message must hold (its topic's), checked before the body is read.
        :raises CodecError: a subclass saying what is wrong with the message.
        """
        writer = self._writer_of(data, event)
        reader = self._readers[writer.event]
        buffer = io.BytesIO(data)
        buffer.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(buffer, writer.parsed, None if reader is writer else reader.parsed)
        except EOFError:
            raise UndecodableBody(f"{writer.label}: body truncated ({len(data) - HEADER_SIZE} bytes)") from None
        except Exception as exc:  # malformed bytes surface as many fastavro and builtin exception types
            raise UndecodableBody(f"{writer.label} read as {reader.label}: {type(exc).__name__}: {exc}") from None
        if buffer.tell() != len(data):
            raise UndecodableBody(f"{writer.label}: {len(data) - buffer.tell()} bytes after the end of the body")
        return writer.event, record

    def decode_message(self, data: bytes | None, event: str,
                       headers: Sequence[tuple[str, bytes | None]] | None = None) -> tuple[str, dict[str, Any]]:
        """:meth:`decode` for a message any client may have sent: a JSON object (its first byte
        that is not whitespace is ``{``, or its ``headers`` say ``content-type: application/json``)
        is read by :class:`~connectors.kafka.jsonrecord.JsonReader` as ``event``'s reader version,
        written as that version's Avro and read back by :meth:`decode`, so its record has exactly
        the form, defaults and checks of an Avro message's; any other message is read by
        :meth:`decode`.

        :raises InvalidJson: a JSON message that is no object of the reader version (the message
            names the field).
        :raises CodecError: another message :meth:`decode` refuses.
        """
        from connectors.kafka.jsonrecord import JsonReader, looks_like_json, says_json

        if not (looks_like_json(data) or says_json(headers)):
            return self.decode(data, event)
        reader = self.reader(event)
        record = JsonReader(reader, self.other_fields(event)).record(data)
        try:
            body = self.encode(event, record, version=reader.version)
        except InvalidEvent as exc:
            raise InvalidJson(f"JSON as {reader.label}: {exc}") from None
        return self.decode(body, event)

    def decode_batch(self, messages: Sequence[bytes | None], event: str) -> DecodedBatch:
        """Decode the messages of a topic carrying ``event``; bad ones become failures, not errors."""
        self.reader(event)
        records: list[dict[str, Any]] = []
        failures: list[Failure] = []
        for index, data in enumerate(messages):
            try:
                records.append(self.decode(data, event)[1])
            except CodecError as exc:
                failures.append(Failure(index, type(exc).__name__, str(exc)))
        return DecodedBatch(records, failures)

    def decode_batch_arrow(self, messages: Sequence[bytes | None], event: str,
                           json: Collection[int] = ()) -> ArrowBatch:
        """Like :meth:`decode_batch`, the records as one table typed by :meth:`arrow_schema`.

        The reference of the sinks' hot path (:mod:`connectors.kafka.native`). Bodies are read with
        the logical types left out (timestamps as epoch milliseconds, UUIDs as text) and the
        columns converted once for the whole batch; the UUID text is then checked for the whole
        column at once. A message that looks like a JSON object, or whose index is in ``json``
        (its headers say so), is read by :class:`~connectors.kafka.jsonrecord.JsonReader`.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        from connectors.kafka.jsonrecord import JsonReader, looks_like_json

        reader = self.reader(event)
        reader_plain = _plain(reader)
        json_reader = JsonReader(reader, self.other_fields(event))
        records: list[dict[str, Any]] = []
        positions: list[int] = []
        failures: list[Failure] = []
        for index, data in enumerate(messages):
            try:
                if index in json or looks_like_json(data):
                    records.append(json_reader.record(data))
                    positions.append(index)
                    continue
                writer = self._writer_of(data, event)
                buffer = io.BytesIO(data)
                buffer.seek(HEADER_SIZE)
                try:
                    record = schemaless_reader(buffer, _plain(writer), None if writer is reader else reader_plain)
                except EOFError:
                    raise UndecodableBody(f"{writer.label}: body truncated ({len(data) - HEADER_SIZE} bytes)") from None
                except Exception as exc:  # malformed bytes surface as many exception types
                    raise UndecodableBody(f"{writer.label} read as {reader.label}: {type(exc).__name__}: {exc}") from None
                if buffer.tell() != len(data):
                    raise UndecodableBody(f"{writer.label}: {len(data) - buffer.tell()} bytes after the end of the body")
            except CodecError as exc:
                failures.append(Failure(index, type(exc).__name__, str(exc)))
                continue
            records.append(record)
            positions.append(index)

        schema = self.arrow_schema(event)
        plain = _plain_arrow(schema)
        try:
            table = pa.Table.from_pylist(records, schema=plain).cast(schema)
        except (pa.ArrowException, OverflowError):
            # A body fastavro reads but Arrow cannot hold (an ``int`` varint past 32 bits): find
            # the records at fault, one by one on this rare path, and fail them alone.
            kept = []
            for record, index in zip(records, positions):
                try:
                    pa.Table.from_pylist([record], schema=plain)
                except (pa.ArrowException, OverflowError) as exc:
                    failures.append(Failure(index, UndecodableBody.__name__,
                                            f"{reader.label}: a value does not fit its type: {type(exc).__name__}: {exc}"))
                    continue
                kept.append((record, index))
            records, positions = [r for r, _ in kept], [i for _, i in kept]
            failures.sort(key=lambda f: f.index)
            table = pa.Table.from_pylist(records, schema=plain).cast(schema)
        uuid_fields = [f["name"] for f in reader.schema["fields"] if _logical_type(f["type"]) == "uuid"]
        bad = None
        for name in uuid_fields:
            ok = pc.fill_null(pc.match_substring_regex(table[name], _UUID_PATTERN), True)
            bad = pc.invert(ok) if bad is None else pc.or_(bad, pc.invert(ok))
        if bad is not None and pc.any(bad).as_py():
            for row in pc.indices_nonzero(bad).to_pylist():
                value = {name: records[row][name] for name in uuid_fields}
                failures.append(Failure(positions[row], UndecodableBody.__name__,
                                        f"{reader.label}: not a UUID in {value}"))
            failures.sort(key=lambda f: f.index)
            table = table.filter(pc.invert(bad))
        return ArrowBatch(table, failures)

    def other_fields(self, event: str) -> list[str]:
        """The top-level fields of ``event``'s versions that its reader version lacks: a JSON
        message may carry them, and they are ignored, as Avro resolution skips them."""
        own = {field["name"] for field in self.reader(event).schema["fields"]}
        return sorted({field["name"] for number in self.registry.versions(event)
                       for field in self.registry.get(event, number).schema["fields"]} - own)

    def _writer_of(self, data: bytes | None, event: str | None) -> SchemaVersion:
        """The writer schema a message names in its header, checked against ``event``."""
        if data is None or len(data) < HEADER_SIZE:
            size = "no value" if data is None else f"{len(data)} bytes"
            raise BadMarker(f"not an Avro single-object message: {size}, less than the {HEADER_SIZE}-byte header")
        if data[:2] != MARKER:
            raise BadMarker(f"not an Avro single-object message: starts with {bytes(data[:2]).hex()}, not c301")
        fingerprint = bytes(data[2:HEADER_SIZE])
        writer = self.registry.by_fingerprint(fingerprint)
        if writer is None:
            raise UnknownSchema(f"no known schema has fingerprint {fingerprint.hex()} "
                                f"(schemas in {self.registry.schemas_dir})")
        if event is not None and writer.event != event:
            raise WrongEventType(f"expected {event}, got {writer.label}")
        return writer

    def arrow_schema(self, event: str) -> pa.Schema:
        """The Arrow schema of ``event``'s reader version (see :func:`arrow_schema`)."""
        if event not in self._arrow_schemas:
            self._arrow_schemas[event] = arrow_schema(self.reader(event).schema)
        return self._arrow_schemas[event]


def arrow_schema(avro_record: Mapping[str, Any]) -> pa.Schema:
    """The Arrow schema of an (expanded) Avro record schema, one column per field.

    string and uuid -> string, int -> int32, long -> int64, float -> float32, double -> float64,
    boolean -> bool, bytes -> binary, enum -> string, timestamp-millis -> timestamp[ms, UTC],
    ``["null", T]`` -> nullable T, array -> list, map -> map<string, T>.

    :raises ValueError: a field has a type with no mapping (named in the message).
    """
    import pyarrow as pa

    return pa.schema([_arrow_field(field["name"], field["type"]) for field in avro_record["fields"]])


def _arrow_field(name: str, avro_type: Any) -> pa.Field:
    import pyarrow as pa

    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        if len(branches) != 1 or len(avro_type) != 2:
            raise ValueError(f"field {name!r}: only [\"null\", T] unions map to Arrow, not {avro_type}")
        return pa.field(name, _arrow_type(name, branches[0]), nullable=True)
    return pa.field(name, _arrow_type(name, avro_type), nullable=False)


def _arrow_type(name: str, avro_type: Any) -> pa.DataType:
    import pyarrow as pa

    logical = _logical_type(avro_type)
    base = avro_type["type"] if isinstance(avro_type, dict) else avro_type
    if logical == "timestamp-millis":
        return pa.timestamp("ms", tz="UTC")
    if logical not in (None, "uuid"):
        raise ValueError(f"field {name!r}: no Arrow mapping for logical type {logical}")
    primitives = {
        "string": pa.string(), "bytes": pa.binary(), "int": pa.int32(), "long": pa.int64(),
        "float": pa.float32(), "double": pa.float64(), "boolean": pa.bool_(), "enum": pa.string(),
    }
    if base in primitives:
        return primitives[base]
    if base == "array":
        return pa.list_(_arrow_field("item", avro_type["items"]).type)
    if base == "map":
        return pa.map_(pa.string(), _arrow_field("value", avro_type["values"]).type)
    raise ValueError(f"field {name!r}: no Arrow mapping for Avro type {base}")


_UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


#: id(SchemaVersion) -> (the version, kept alive so its id is not reused; its plain schema).
_plain_schemas: dict[int, tuple[SchemaVersion, dict[str, Any]]] = {}


def _plain(version: SchemaVersion) -> dict[str, Any]:
    """``version``'s parsed schema without logical types: values come back as their base type."""
    entry = _plain_schemas.get(id(version))
    if entry is None:
        entry = _plain_schemas[id(version)] = (version, _strip_logical_types(version))
    return entry[1]


def _strip_logical_types(version: SchemaVersion) -> dict[str, Any]:
    from fastavro import parse_schema

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "logicalType"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return parse_schema(strip(version.schema))


def _plain_arrow(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every timestamp as int64, the form :func:`_plain` bodies are read in."""
    import pyarrow as pa

    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_timestamp(t):
            return pa.int64()
        if pa.types.is_list(t):
            return pa.list_(plain(t.value_type))
        return t

    return pa.schema([pa.field(f.name, plain(f.type), f.nullable) for f in schema])


def _logical_type(avro_type: Any) -> str | None:
    return avro_type.get("logicalType") if isinstance(avro_type, dict) else None


def _validate(writer: SchemaVersion, record: Mapping[str, Any]) -> None:
    if not isinstance(record, Mapping):
        raise InvalidEvent(f"{writer.label}: expected a mapping of field names to values, "
                           f"got {type(record).__name__}")
    fields = {field["name"]: field for field in writer.schema["fields"]}
    unknown = sorted(set(record) - set(fields))
    if unknown:
        raise InvalidEvent(f"{writer.label}: unknown field(s) {', '.join(map(repr, unknown))}")
    try:
        # Checked without building the errors first: fastavro tries a union's branches by raising
        # and catching them, which costs more than the check itself; only a bad record pays that.
        if not validate(record, writer.parsed, raise_errors=False):
            validate(record, writer.parsed, raise_errors=True)
    except ValidationError as exc:
        raise InvalidEvent(_describe_validation_error(writer, record, exc)) from None
    for name, field in fields.items():
        # fastavro writes any string for a uuid; the event_id is the dedup key, so check it is one.
        value = record.get(name)
        if _logical_type(field["type"]) == "uuid" and isinstance(value, str):
            try:
                uuid.UUID(value)
            except ValueError:
                raise InvalidEvent(f"{writer.label}: field {name!r} is {value!r}, not a UUID") from None


def _describe_validation_error(writer: SchemaVersion, record: Mapping[str, Any], exc: ValidationError) -> str:
    # fastavro reports one error per union branch tried, all for the same field: merge them.
    first = exc.errors[0]
    name = first.field.removeprefix(writer.parsed["name"] + ".")
    expected = " or ".join(_describe_type(e.schema) for e in exc.errors if e.field == first.field)
    if name not in record:
        return f"{writer.label}: field {name!r} is missing (expected {expected})"
    value = f"{first.datum!r} ({type(first.datum).__name__})"
    if record[name] is first.datum:
        return f"{writer.label}: field {name!r} is {value}, expected {expected}"
    # The bad value sits inside the field (an array item, a map value).
    return f"{writer.label}: field {name!r} holds {value} where {expected} is expected"


def _describe_type(avro_type: Any) -> str:
    if isinstance(avro_type, dict):
        if avro_type.get("type") == "enum":
            return f"one of the symbols {', '.join(avro_type['symbols'])}"
        return avro_type.get("logicalType") or avro_type.get("type", "?")
    return str(avro_type)


@cache
def default_codec() -> Codec:
    """The codec of the repository's schemas, built on first use and then shared."""
    return Codec()


def encode(event: str, record: Mapping[str, Any], version: int | None = None) -> bytes:
    """:meth:`Codec.encode` with the default codec."""
    return default_codec().encode(event, record, version)


def decode(data: bytes | None, event: str | None = None) -> tuple[str, dict[str, Any]]:
    """:meth:`Codec.decode` with the default codec."""
    return default_codec().decode(data, event)


def decode_batch(messages: Sequence[bytes | None], event: str) -> DecodedBatch:
    """:meth:`Codec.decode_batch` with the default codec."""
    return default_codec().decode_batch(messages, event)


def decode_batch_arrow(messages: Sequence[bytes | None], event: str) -> ArrowBatch:
    """:meth:`Codec.decode_batch_arrow` with the default codec."""
    return default_codec().decode_batch_arrow(messages, event)
