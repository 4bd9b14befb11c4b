"""Values the schemas admit but a store cannot hold: checked once, up front, for a whole batch.

An Avro ``long`` admits an event time in the year 300,000, a ``double`` admits NaN, an ``int``
a negative token count, a ``string`` a megabyte agent id. The lake and ClickHouse would each
refuse, truncate or silently drop some of these, and differently (ClickHouse's TTL drops a row
the lake keeps; Arrow's microsecond cast fails on what ClickHouse stores). So the sink loop
checks every decoded batch against one rule per field *before* either store sees it, and what
fails goes to the DLQ with the reason: the two stores then hold the same rows by construction.

The rules, by column type (the same for every event; ``docs/guarantees.md`` has the table):

``event_time``
    From 1970-01-01 up to (not including) 2106-02-07 06:28:16 UTC, the range of ClickHouse's
    ``DateTime``, which the rollups' ``minute`` column uses; at most ``EZ_EVENT_TIME_FUTURE_TOLERANCE_S``
    after the message's Kafka timestamp; and not older than the shorter retention of the two
    stores (``EZ_LAKE_RETENTION_DAYS``, ``EZ_CLICKHOUSE_TTL_DAYS``) before it.
other timestamps (``window_start``, ``first_seen``…)
    The same absolute range; null where the schema allows it.
numbers (``double``, ``int``, ``long`` fields)
    Finite (no NaN, no infinity) and not negative: every number of the catalogue is a cost, a
    count, a duration, a size or a share. Numbers inside arrays (embedding vectors) need only be
    finite.
strings (fields, array items, map keys and values)
    At most ``EZ_MAX_STRING_BYTES`` bytes of UTF-8. Free-text fields (``prompt_snippet``…) are
    exempt: the free-text policy drops or cuts them after this check.

Relative bounds are taken from the message's Kafka timestamp, not the clock, so every sink, and
a replay a week later, decides the same for the same message. A message without a timestamp
(a pre-0.10 message format) gets the absolute bounds only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.kafka.freetext import FREE_TEXT_FIELDS
from connectors.kafka.jsonrecord import json_indexes
from connectors.settings import Settings

#: Error class of a value that fails a rule (a DLQ header value).
INVALID_VALUE = "InvalidValue"
#: The event-time column of every event, and the only one checked against the Kafka timestamp.
EVENT_TIME = "event_time"
#: Earliest and first refused instant of every timestamp, epoch milliseconds: ClickHouse's DateTime.
MIN_TIME_MS = 0
END_TIME_MS = 2**32 * 1000
_DAY_MS = 86_400_000
#: Arrow type ids with no rule of their own, and of the top-level strings (see :func:`check`).
_BOOL = pa.bool_().id
_STRINGS = frozenset({pa.string().id, pa.large_string().id, pa.binary().id})
#: Columns of at most this many values are asked in Python whether anything is wrong.
_SMALL = 64


@dataclass(frozen=True)
class ValueRules:
    """The bounds a decoded batch is checked against (see the module docstring)."""

    future_tolerance_ms: int
    max_age_ms: int
    max_string_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "ValueRules":
        """The rules of ``EZ_EVENT_TIME_FUTURE_TOLERANCE_S``, the retentions and ``EZ_MAX_STRING_BYTES``."""
        return cls(
            future_tolerance_ms=int(settings.event_time_future_tolerance_s * 1000),
            max_age_ms=min(settings.lake_retention_days, settings.clickhouse_ttl_days) * _DAY_MS,
            max_string_bytes=settings.max_string_bytes,
        )


@dataclass(frozen=True)
class Invalid:
    """A row of a batch that breaks a rule: its position in the table and why (the first rule broken)."""

    row: int
    message: str


@dataclass(frozen=True)
class Screened:
    """What :func:`screen` made of a list of messages."""

    #: The rows that decode and pass the rules, in message order.
    table: pa.Table
    #: Each row's index in the messages.
    positions: np.ndarray
    #: ``(index, error class, message)`` of every other message: the decoder's, then the rules'.
    failures: list[tuple[int, str, str]]


def screen(decoder: Any, messages: Sequence[Any], event: str, rules: ValueRules) -> Screened:
    """Decode Kafka ``messages`` of ``event`` in one call of ``decoder`` (a
    :class:`~connectors.kafka.native.NativeCodec`) and :func:`check` the rows against each
    message's Kafka timestamp: the one decision every sink and the alerts role take.

    Avro single-object messages and JSON objects are decoded alike; a message whose headers say
    ``content-type: application/json`` is read as JSON whatever its bytes
    (:mod:`connectors.kafka.jsonrecord`)."""
    from confluent_kafka import Message

    json = json_indexes(list(map(Message.headers, messages)))
    result = decoder.decode_batch_arrow(list(map(Message.value, messages)), event, json)
    failures = [(f.index, f.error_class, f.message) for f in result.failures]
    table = result.table
    kafka_ms = np.array([ms if kind else -1 for kind, ms in map(Message.timestamp, messages)], np.int64)
    positions = np.arange(len(messages))
    if failures:
        positions = np.delete(positions, [index for index, _, _ in failures])
    invalid = check(table, event, kafka_ms[positions], rules)
    if invalid:
        rows = [i.row for i in invalid]
        failures += [(int(positions[i.row]), INVALID_VALUE, i.message) for i in invalid]
        table = table.filter(pc.invert(pc.is_in(pa.array(range(table.num_rows)), value_set=pa.array(rows))))
        positions = np.delete(positions, rows)
    return Screened(table, positions, failures)


def check(table: pa.Table, event: str, kafka_ms: Sequence[int | None] | np.ndarray, rules: ValueRules) -> list[Invalid]:
    """The rows of ``table`` (decoded ``event`` records) that break a rule, in row order.

    ``kafka_ms`` holds each row's Kafka timestamp in epoch milliseconds (None when the message has
    none; or an int64 array with -1 there). Work is per column over the whole batch; per-row Python
    only for rows that fail.
    """
    n = table.num_rows
    if n == 0:
        return []
    reasons: dict[int, str] = {}
    exempt = FREE_TEXT_FIELDS.get(event, ())
    # A small batch's columns cost more to visit than to check: those that cannot break a rule
    # are passed by their type (booleans; top-level strings when the whole table's buffers
    # together fit the cap, one call for all of them).
    strings_fit = table.get_total_buffer_size() <= rules.max_string_bytes
    for i, field in enumerate(table.schema):
        name, type_id = field.name, field.type.id
        if name in exempt or type_id == _BOOL or (strings_fit and type_id in _STRINGS):
            continue
        column = table.column(i)
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        if name == EVENT_TIME:
            _event_time(column, kafka_ms, rules, reasons)
        else:
            _values(name, column, None, rules, reasons, top=True)
    return [Invalid(row, reasons[row]) for row in sorted(reasons)]


def _event_time(column: pa.Array, kafka_ms: Sequence[int | None] | np.ndarray, rules: ValueRules,
                reasons: dict[int, str]) -> None:
    ms = epoch_ms_array(column)
    if isinstance(kafka_ms, np.ndarray):
        kafka = kafka_ms.astype(np.int64, copy=False)
    else:
        kafka = np.array([-1 if t is None else t for t in kafka_ms], dtype=np.int64)
    if len(ms) <= _SMALL:  # a live fetch: asked in Python whether anything is wrong at all
        future, max_age = rules.future_tolerance_ms, rules.max_age_ms
        if all(MIN_TIME_MS <= t < END_TIME_MS and (k < 0 or k - max_age <= t <= k + future)
               for t, k in zip((t or MIN_TIME_MS for t in ms.to_pylist()), kafka.tolist())):  # null: as below
            return
    values = _numpy(ms, MIN_TIME_MS)  # MIN_TIME_MS is 0: a null is neither late nor old
    _absolute_time(EVENT_TIME, ms, None, reasons, values)
    known = kafka >= 0
    late = known & (values > kafka + rules.future_tolerance_ms)
    old = known & (values < kafka - rules.max_age_ms)
    if not (late.any() or old.any()):
        return
    for row in np.flatnonzero(late):
        reasons.setdefault(int(row), (
            f"{EVENT_TIME} {_iso(values[row])} is {(values[row] - kafka[row]) / 1000:.0f} s after the message's "
            f"Kafka timestamp {_iso(kafka[row])}: more than the {rules.future_tolerance_ms / 1000:.0f} s "
            "allowed (EZ_EVENT_TIME_FUTURE_TOLERANCE_S)"))
    for row in np.flatnonzero(old):
        reasons.setdefault(int(row), (
            f"{EVENT_TIME} {_iso(values[row])} is older than the retention of {rules.max_age_ms // _DAY_MS} days "
            f"before the message's Kafka timestamp {_iso(kafka[row])} (EZ_LAKE_RETENTION_DAYS, "
            "EZ_CLICKHOUSE_TTL_DAYS): both stores would delete it"))


def _values(name: str, values: pa.Array, parents: np.ndarray | None, rules: ValueRules,
            reasons: dict[int, str], top: bool) -> None:
    """Check ``values`` (a column, or the flattened items of one) whose item i belongs to row
    ``parents[i]`` (or row i when ``parents`` is None)."""
    kind = values.type
    if pa.types.is_timestamp(kind):
        _absolute_time(name, epoch_ms_array(values), parents, reasons)
    elif pa.types.is_floating(kind):
        # Each branch first asks whether anything at all is wrong (in Python for a few values,
        # else numpy): a pyarrow compute call costs about 10 µs, which is most of a small batch's
        # check (the alerts role's are small). A null counts as 0 here, and passes.
        if len(values) <= _SMALL:
            if all(v is None or (math.isfinite(v) and not (top and v < 0)) for v in values.to_pylist()):
                return
        else:
            plain = _numpy(values, 0.0)
            if np.isfinite(plain).all() and not (top and (plain < 0).any()):
                return
        finite = pc.fill_null(pc.is_finite(values), True)
        _flag(name, pc.invert(finite), values, parents, reasons, "is not a finite number")
        if top:
            _flag(name, pc.fill_null(pc.less(values, 0), False), values, parents, reasons, "is negative")
    elif pa.types.is_integer(kind):
        if not (top and pa.types.is_signed_integer(kind)):
            return
        negative = (min((v for v in values.to_pylist() if v is not None), default=0) < 0 if len(values) <= _SMALL
                    else (_numpy(values, 0) < 0).any())
        if negative:
            _flag(name, pc.fill_null(pc.less(values, 0), False), values, parents, reasons, "is negative")
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        data = values.buffers()[2]
        if data is None or data.size <= rules.max_string_bytes:  # all strings together fit the cap
            return
        too_long = pc.fill_null(pc.greater(pc.binary_length(values), rules.max_string_bytes), False)
        if pc.any(too_long).as_py():
            lengths = pc.binary_length(values)
            for i in pc.indices_nonzero(too_long).to_pylist():
                row = i if parents is None else int(parents[i])
                reasons.setdefault(row, f"{name} is {lengths[i].as_py():,} bytes: more than the "
                                        f"{rules.max_string_bytes:,} allowed (EZ_MAX_STRING_BYTES)")
    elif pa.types.is_map(kind):
        entries = pa.ListArray.from_arrays(values.offsets, pa.StructArray.from_arrays(
            [values.keys, values.items], ["key", "value"]))
        inner = _parents(entries, parents)
        _values(f"{name} key", values.keys, inner, rules, reasons, top=False)
        _values(f"{name} value", values.items, inner, rules, reasons, top=False)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        _values(f"{name} item", pc.list_flatten(values), _parents(values, parents), rules, reasons, top=False)
    elif pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            _values(f"{name}.{kind.field(i).name}", values.field(i), parents, rules, reasons, top)


def _parents(lists: pa.Array, parents: np.ndarray | None) -> np.ndarray:
    """The row of each item of ``lists`` (a list array whose entry i belongs to ``parents[i]``)."""
    own = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
    return own if parents is None else parents[own]


def _flag(name: str, mask: pa.Array, values: pa.Array, parents: np.ndarray | None,
          reasons: dict[int, str], what: str) -> None:
    if not pc.any(mask).as_py():
        return
    for i in pc.indices_nonzero(mask).to_pylist():
        row = i if parents is None else int(parents[i])
        reasons.setdefault(row, f"{name} {values[i].as_py()!r} {what}: costs, counts and durations must be "
                                "finite and not negative")


def _absolute_time(name: str, ms: pa.Array, parents: np.ndarray | None, reasons: dict[int, str],
                   plain: np.ndarray | None = None) -> None:
    """Flag the times outside the stores' range (``plain``: ``ms`` as numpy, nulls as MIN_TIME_MS)."""
    if plain is None:
        plain = _numpy(ms, MIN_TIME_MS)
    if not ((plain < MIN_TIME_MS).any() or (plain >= END_TIME_MS).any()):
        return
    out = pc.fill_null(pc.or_(pc.less(ms, MIN_TIME_MS), pc.greater_equal(ms, END_TIME_MS)), False)
    if not pc.any(out).as_py():
        return
    for i in pc.indices_nonzero(out).to_pylist():
        row = i if parents is None else int(parents[i])
        reasons.setdefault(row, f"{name} {_iso(ms[i].as_py())} is outside the range the stores hold "
                                f"({_iso(MIN_TIME_MS)} to {_iso(END_TIME_MS)}, exclusive)")


def _numpy(values: pa.Array, null: Any) -> np.ndarray:
    """A numeric array as numpy (zero-copy when it has no nulls), its nulls as ``null``."""
    if values.null_count:
        values = pc.fill_null(values, null)
    return values.to_numpy(zero_copy_only=False)


def epoch_ms_array(values: pa.Array) -> pa.Array:
    """Epoch milliseconds of a timestamp array (of any unit), as int64: for milliseconds a view of
    the same buffer (a cast would cost a kernel call, about 18 µs, most of a live fetch's budget)."""
    unit = values.type.unit
    raw = values.view(pa.int64())
    if unit == "ms":
        return raw
    if unit == "s":
        return pc.multiply(raw, 1000)
    return pc.divide(raw, {"us": 1000, "ns": 1_000_000}[unit])


def _iso(ms: int | None) -> str:
    """``2026-11-20T08:00:00.000Z`` for any epoch milliseconds, also those Python's datetime cannot hold."""
    if ms is None:
        return "null"
    ms = int(ms)
    try:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms since 1970"
