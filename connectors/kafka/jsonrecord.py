"""JSON objects on the event topics: the rules they are read by, in Python (the reference).

Any Kafka client may produce an event as one JSON object instead of an Avro single-object
message. A message is read as JSON when its first byte that is not JSON whitespace is ``{`` (an
Avro message starts with ``C3 01``) or when its headers say ``content-type: application/json``
(then it fails as JSON whatever it holds). It is checked against the reader version of its
topic's event (:meth:`Codec.reader <connectors.kafka.codec.Codec.reader>`), field by field:

- a field is taken by its name; one left out takes its default, and is an error when it has
  none (``cost_usd: missing, and the field has no default``); an optional field (a union with
  null and a null default) may be left out or null;
- a field no version of the event has is an error (``cost_usd_total: unknown field``): a misspelt
  field would otherwise lose its value silently. A field of another version (a newer one that
  the reader does not read yet) is ignored, as Avro resolution skips a writer's field the
  reader lacks;
- ``int`` and ``long`` take a JSON integer in range (no fraction, no exponent), ``float`` and
  ``double`` any number; ``boolean`` only true or false;
- a ``timestamp-millis`` (``event_time``…) takes epoch milliseconds (an integer) or an RFC 3339
  timestamp with its offset, ``2026-11-20T08:00:00.123Z`` or ``…+01:00`` (``T`` may be a space;
  digits past the milliseconds are dropped); one without an offset is refused, never guessed;
- a ``uuid`` takes 8-4-4-4-12 hex digits (``event_id: not a UUID: "abc"``);
- an enum symbol the schema lacks is read as the enum's default (``provider`` -> ``other``), as
  an Avro message's symbol unknown to the reader is; without a default it is an error;
- ``bytes`` and ``fixed`` take a string of code points up to U+00FF (Avro's JSON encoding).

A message that breaks a rule is an :class:`~connectors.kafka.codec.InvalidJson` failure naming
the field, e.g. ``JSON as llm_call v2: input_tokens: expected int, got "12"``. The native decoder
(``native/src/json/``) applies the same rules, with the same messages, without a Python object
per event; this module is what tests/unit/test_native_json.py compares it with.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from connectors.kafka.codec import InvalidJson
from connectors.kafka.schemas import SchemaVersion

#: The header value that makes a message JSON whatever its bytes (parameters after ``;`` aside).
JSON_CONTENT_TYPE = "application/json"
#: Most characters of a string value a failure message quotes.
_QUOTED_CHARS = 40
#: serde_json's nesting limit (the native parser): a 128th nested array or object is refused.
_MAX_NESTING = 128
_TIMESTAMP = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
                        r"(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def looks_like_json(data: bytes | None) -> bool:
    """Whether ``data``'s first byte that is not JSON whitespace is ``{``."""
    return data is not None and bytes(data).lstrip(b" \t\n\r")[:1] == b"{"


def says_json(headers: Iterable[tuple[str, bytes | None]] | None) -> bool:
    """Whether Kafka ``headers`` hold ``content-type: application/json`` (any case, any parameters)."""
    for key, value in headers or ():
        if key.lower() == "content-type" and value is not None:
            media_type = bytes(value).split(b";", 1)[0].strip().lower()
            if media_type == JSON_CONTENT_TYPE.encode():
                return True
    return False


def json_indexes(headers: Sequence[Any]) -> list[int]:
    """The positions of the messages whose ``headers`` (each a list of pairs, or None) say JSON."""
    if not any(headers):  # most batches: no message has headers (a C loop, no Python per message)
        return []
    return [i for i, h in enumerate(headers) if h and says_json(h)]


class JsonReader:
    """Reads JSON messages as records of ``reader``, in the form the Avro path reads bodies in:
    timestamps as epoch milliseconds, UUIDs as text.

    :param other_fields: top-level fields of the event's other versions, ignored in a message.
    """

    def __init__(self, reader: SchemaVersion, other_fields: Iterable[str] = ()) -> None:
        self.reader = reader
        self.ignored = frozenset(other_fields)

    def record(self, data: bytes | None) -> dict[str, Any]:
        """The record of one JSON message.

        :raises InvalidJson: it is no JSON object, or breaks a rule (the message names the field).
        """
        prefix = f"JSON as {self.reader.label}: "
        if data is None:
            raise InvalidJson(prefix + "no value")
        try:
            value = json.loads(bytes(data).decode("utf-8"), parse_int=_parse_int, parse_float=_parse_float,
                               parse_constant=_refuse_constant)
            _check_text(value, 1)
        except (ValueError, RecursionError) as exc:
            raise InvalidJson(f"{prefix}not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidJson(f"{prefix}expected a JSON object, got {_show(value)}")
        try:
            return self._record(self.reader.schema, value, "")
        except _Broken as exc:
            raise InvalidJson(prefix + str(exc)) from None

    def _record(self, schema: dict[str, Any], obj: dict[str, Any], path: str) -> dict[str, Any]:
        prefix = f"{path}." if path else ""
        out = {}
        for field in schema["fields"]:
            name = field["name"]
            if name in obj:
                out[name] = self._value(field["type"], obj[name], prefix + name)
            elif "default" in field:
                out[name] = self._value(field["type"], field["default"], prefix + name)
            else:
                raise _Broken(f"{prefix}{name}: missing, and the field has no default")
        names = {field["name"] for field in schema["fields"]}
        for key in obj:
            if key not in names and not (not path and key in self.ignored):
                raise _Broken(f"{prefix}{key}: unknown field")
        return out

    def _value(self, avro_type: Any, value: Any, path: str) -> Any:
        kind = _kind(avro_type)

        def mismatch() -> _Broken:
            return _Broken(f"{path}: expected {_describe(avro_type)}, got {_show(value)}")

        if kind == "union":
            fitting = [t for t in avro_type if (_kind(t) == "null") == (value is None)]
            last = None
            for branch in fitting:
                try:
                    return self._value(branch, value, path)
                except _Broken as exc:
                    last = exc
            raise last if last is not None and len(fitting) == 1 else mismatch()
        if kind == "null":
            if value is None:
                return None
        elif kind == "boolean":
            if type(value) is bool:
                return value
        elif kind in ("int", "long", "timestamp"):
            if type(value) is int:
                low, high = (-2**31, 2**31) if kind == "int" else (-2**63, 2**63)
                if not low <= value < high:
                    raise _Broken(f"{path}: {value} is out of the {'int' if kind == 'int' else 'long'} range")
                return value
            if kind == "timestamp" and type(value) is str:
                ms = parse_timestamp(value)
                if ms is None:
                    raise _Broken(f"{path}: {_show(value)} is not an ISO 8601 timestamp with an offset "
                                  "(like 2026-11-20T08:00:00.000Z)")
                return ms
        elif kind in ("float", "double"):
            if type(value) in (int, float):
                return float(value)
        elif kind == "string":
            if type(value) is str:
                return value
        elif kind == "uuid":
            if type(value) is str:
                if not _UUID.fullmatch(value):
                    raise _Broken(f"{path}: not a UUID: {_show(value)}")
                return value
        elif kind in ("bytes", "fixed"):
            if type(value) is str and all(ord(c) < 256 for c in value):
                raw = value.encode("latin-1")
                if kind == "bytes" or len(raw) == avro_type["size"]:
                    return raw
        elif kind == "enum":
            if type(value) is str:
                if value in avro_type["symbols"]:
                    return value
                if "default" in avro_type:
                    return avro_type["default"]
                raise _Broken(f"{path}: unknown symbol {_show(value)}")
        elif kind == "array":
            if type(value) is list:
                return [self._value(avro_type["items"], item, f"{path}[{i}]") for i, item in enumerate(value)]
        elif kind == "map":
            if type(value) is dict:
                return {key: self._value(avro_type["values"], item, f"{path}[{_quote(key)}]")
                        for key, item in value.items()}
        elif kind == "record":
            if type(value) is dict:
                return self._record(avro_type, value, path)
        raise mismatch()


class _Broken(Exception):
    """A rule a value breaks; the message starts with the field's path."""


def _kind(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return "union"
    if isinstance(avro_type, dict):
        logical, base = avro_type.get("logicalType"), avro_type["type"]
        if isinstance(base, (dict, list)):
            return _kind(base)
        if (base, logical) == ("string", "uuid"):
            return "uuid"
        if (base, logical) == ("long", "timestamp-millis"):
            return "timestamp"
        return "record" if base == "error" else base
    return avro_type


def _describe(avro_type: Any) -> str:
    kind = _kind(avro_type)
    if kind == "union":
        return " or ".join(_describe(t) for t in avro_type)
    return {
        "uuid": "a UUID string", "timestamp": "epoch milliseconds or an ISO 8601 string",
        "enum": "a symbol (string)", "array": "an array", "map": "an object", "record": "an object",
        "fixed": f"fixed({avro_type['size']})" if kind == "fixed" else "",
    }.get(kind) or kind


def parse_timestamp(text: str) -> int | None:
    """Epoch milliseconds of an RFC 3339 timestamp with its offset; None for any other text."""
    match = _TIMESTAMP.fullmatch(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction, zulu, sign, offset_h, offset_m = match.group(7, 8, 9, 10, 11)
    offset = 0 if zulu else (int(offset_h) * 60 + int(offset_m)) * (1 if sign == "+" else -1)
    if hour > 23 or minute > 59 or second > 59 or (not zulu and (int(offset_h) > 23 or int(offset_m) > 59)):
        return None
    try:
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    millis = int((fraction or "")[:3].ljust(3, "0"))
    return ((days * 24 + hour) * 60 + minute - offset) * 60_000 + second * 1000 + millis


def _parse_int(text: str) -> int | float:
    # As serde_json: integers within u64 or i64 stay integers, others are floats; "-0" is -0.0.
    if text == "-0":
        return -0.0
    value = int(text)
    if -2**63 <= value < 2**64:
        return value
    return _finite(float(value))


def _parse_float(text: str) -> float:
    return _finite(float(text))


def _finite(value: float) -> float:
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _refuse_constant(text: str) -> None:
    raise ValueError(f"{text} is not JSON")


def _check_text(value: Any, depth: int) -> None:
    """Refuse what serde_json refuses and Python's json takes: text that UTF-8 cannot hold (a lone
    surrogate escape) and nesting past its limit."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, (list, dict)):
        if depth >= _MAX_NESTING:
            raise ValueError("recursion limit exceeded")
        for key in value if isinstance(value, dict) else ():
            key.encode("utf-8")
        for item in value.values() if isinstance(value, dict) else value:
            _check_text(item, depth + 1)


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _show(value: Any) -> str:
    """A value as failure messages quote it (as ``show`` in native/src/json/text.rs)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _quote(value[:_QUOTED_CHARS]) + ("…" if len(value) > _QUOTED_CHARS else "")
    return "an array" if isinstance(value, list) else "an object"
