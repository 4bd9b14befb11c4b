"""Events as columns: what the rules read, a batch at a time.

The alerts role decodes a fetch into one Arrow table per topic (the native decoder). The rules take
it as a :class:`Batch`: the table's columns in the order the events are processed, with each
event's time (and for LLM calls, its partition's watermark) as integer arrays. A rule groups the
batch by its subject (tenant and day, provider and model, key alias, window key, agent, task) and
feeds its state machine once per group; only the groups in which something may fire or resolve
are taken event by event, through the same code as one event at a time (:func:`rows`), so both
give the same alerts.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.validation import epoch_ms_array

#: Batches of at most this many events are encoded in Python (Arrow's kernels cost more to call).
SMALL = 64

#: A row type per event schema and its columns (see :func:`rows`).
_ROW_TYPES: dict[tuple[str, tuple[str, ...]], type] = {}


def event_times(table: pa.Table) -> np.ndarray:
    """The ``event_time`` column of a decoded table as epoch milliseconds (int64)."""
    column = table.column("event_time")
    if column.num_chunks != 1:
        column = column.combine_chunks()
    else:
        column = column.chunk(0)
    return epoch_ms_array(column).to_numpy(zero_copy_only=False)


def rows(event: str, table: pa.Table) -> list[Any]:
    """The rows of a decoded ``event`` table as named tuples with the event's fields, its
    ``event_time`` in epoch milliseconds: what the rules read one event at a time."""
    names = tuple(table.column_names)
    row_type = _ROW_TYPES.get((event, names))
    if row_type is None:
        row_type = _ROW_TYPES[(event, names)] = namedtuple(f"{event}_row", names, rename=True)
    columns = [(epoch_ms_array(column.combine_chunks()) if name == "event_time" else column).to_pylist()
               for name, column in zip(names, table.columns)]
    return list(map(row_type._make, zip(*columns)))


class Batch:
    """A batch of decoded events of schema ``event`` (LLM calls by default) in processing order.

    ``at``: each event's time in epoch milliseconds; ``watermarks``: for LLM calls, the event time
    of the call's own partition before it (what lateness is judged by). Columns are converted
    once, when a rule first reads them: :meth:`codes` (a string column as integer codes and the
    distinct values), :meth:`numbers` (a numeric column as a NumPy array), :meth:`rows` (some
    events as rows, for the groups taken one event at a time).
    """

    def __init__(self, table: pa.Table, watermarks: np.ndarray | None = None, at: np.ndarray | None = None,
                 event: str = "llm_call") -> None:
        self.event = event
        self.table = table
        self.n = table.num_rows
        self.at = event_times(table) if at is None else at
        self.watermarks = watermarks
        self._codes: dict[str, tuple[np.ndarray, list[Any]]] = {}
        self._numbers: dict[str, np.ndarray] = {}

    def codes(self, name: str) -> tuple[np.ndarray, list[Any]]:
        """Column ``name`` as (codes, values): ``values[codes[i]]`` is event ``i``'s value."""
        cached = self._codes.get(name)
        if cached is None and self.n <= SMALL:
            index: dict[Any, int] = {}
            codes = [index.setdefault(value, len(index)) for value in self.table.column(name).to_pylist()]
            cached = self._codes[name] = (np.array(codes, dtype=np.int64), list(index))
        if cached is None:
            column = self.table.column(name)
            encoded = pc.dictionary_encode(column.combine_chunks() if column.num_chunks != 1 else column.chunk(0),
                                           null_encoding="encode")  # a null is a value (None) too
            cached = self._codes[name] = (
                encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False),
                encoded.dictionary.to_pylist(),
            )
        return cached

    def numbers(self, name: str) -> np.ndarray:
        """Numeric column ``name`` as a NumPy array."""
        cached = self._numbers.get(name)
        if cached is None:
            column = self.table.column(name)
            cached = self._numbers[name] = (column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)).to_numpy(zero_copy_only=False)
        return cached

    def is_in(self, name: str, values: frozenset[str] | set[str]) -> np.ndarray:
        """Whether each call's ``name`` is one of ``values`` (a boolean array)."""
        return self.matches(name, values.__contains__)

    def matches(self, name: str, predicate: Callable[[Any], bool]) -> np.ndarray:
        """Whether each event's ``name`` satisfies ``predicate`` (a boolean array), asked once per
        distinct value (e.g. a shard's ``owns``, see :mod:`~streams.intelligence.shards`)."""
        codes, distinct = self.codes(name)
        return np.array([predicate(value) for value in distinct], dtype=bool)[codes] if distinct else np.zeros(self.n, bool)

    def take(self, indices: np.ndarray) -> Batch:
        """The events at ``indices``, in that order, as a batch of their own."""
        return Batch(self.table.take(pa.array(indices, type=pa.int64())),
                     None if self.watermarks is None else self.watermarks[indices], self.at[indices], self.event)

    def rows(self, indices: np.ndarray | list[int]) -> list[Any]:
        """The events at ``indices`` as rows (:func:`rows`), in that order."""
        return rows(self.event, self.table.take(pa.array(np.asarray(indices, dtype=np.int64))))


def combine(*codes: tuple[np.ndarray, int]) -> np.ndarray:
    """One integer per distinct combination of codes, in the order of the combinations:
    ``combine((a, len_a), (b, len_b))`` for code columns ``a`` and ``b`` of ``len_*`` values."""
    combined = np.zeros(len(codes[0][0]), dtype=np.int64)
    bound = 1
    for column, size in codes:
        size = max(size, 1)
        if bound * size >= 1 << 62:  # renumber the combinations so far: they stay below the rows
            distinct, combined = np.unique(combined, return_inverse=True)
            bound = len(distinct)
        combined = combined * size + column
        bound *= size
    return combined


def groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows grouped by ``keys``, each group's rows in their order: (order, starts, ends):
    group ``g`` holds the rows ``order[starts[g]:ends[g]]``; groups come in order of key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate(([0], cuts)) if len(keys) else np.zeros(0, np.int64)
    ends = np.concatenate((cuts, [len(keys)])) if len(keys) else np.zeros(0, np.int64)
    return order, starts, ends
