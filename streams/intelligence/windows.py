"""Tumbling one-minute windows of LLM calls per (tenant, agent, provider, model).

Pure state: the stream agent feeds :class:`WindowStore` the decoded :class:`LlmCall` events of
one partition, calls :meth:`WindowStore.close_due` after each batch and
:meth:`WindowStore.close_idle` from a wall-clock timer, and produces the :class:`ClosedWindow`
records it gets back. Its state goes to a changelog-backed table as :meth:`WindowStore.to_dict`;
write it after every close, so a restored store never closes a window twice.

Windows close on event time: a window ``[start, end)`` closes once the watermark (the greatest
event time seen) reaches ``end + grace``. Events for a window whose end the watermark has passed
but whose grace has not are applied ("in grace"); events for a closed window are only counted in
``late_events`` (the lake and ClickHouse, which are exact, still get them).
"""

from __future__ import annotations

import enum
import functools
import math
from itertools import compress
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

from connectors.kafka.events import LlmCall
from streams.intelligence._time import epoch_ms
from streams.intelligence.batch import Batch, combine, groups

#: Relative accuracy of latency quantiles (DDSketch's default: a quantile is within 1% of the
#: true value of that rank).
RELATIVE_ACCURACY = 0.01


#: One mapping per accuracy, shared by every sketch (it holds constants only): building one is
#: most of the cost of a sketch, and most windows see one or two calls.
_mapping = functools.cache(LogarithmicMapping)


class LatencySketch:
    """Mergeable latency quantiles: a DDSketch that serializes to a JSON-friendly dict.

    DDSketch's own wire format needs protobuf; the dict keeps the same content (the bins of the
    positive store and the zero count) using only the sketch's public API, so a restored sketch
    merges with a fresh one and answers the same quantiles.
    """

    def __init__(
        self,
        relative_accuracy: float = RELATIVE_ACCURACY,
        *,
        _store: DenseStore | None = None,
        _zero_count: float = 0.0,
    ) -> None:
        # We keep the store we hand to the sketch: its bins are what we serialize.
        self._store = DenseStore() if _store is None else _store
        #: Keys of the bins added to since the last :meth:`to_dict` of them only (``touched``).
        self._touched: set[int] = set()
        self._relative_accuracy = relative_accuracy
        self._sketch = BaseDDSketch(
            mapping=_mapping(relative_accuracy),
            store=self._store,
            negative_store=DenseStore(),
            zero_count=_zero_count,
        )

    @property
    def count(self) -> int:
        """Number of latencies added."""
        return round(float(self._sketch.count))

    def add(self, latency_ms: float) -> None:
        """Add one latency; a negative one (a producer's clock bug) counts as 0."""
        value = max(latency_ms, 0.0)
        self._sketch.add(value)
        if value > self._sketch._mapping.min_possible:
            self._touched.add(self._sketch._mapping.key(value))

    def add_latencies(self, latencies: np.ndarray) -> None:
        """Add many latencies: the same sketch as :meth:`add` of each, one bin at a time."""
        zeros, bounds, keys, values, counts = latency_bins(
            self._sketch._mapping, latencies, np.zeros(len(latencies), np.int64), 1)
        self.add_bins(int(zeros[0]), keys.tolist(), values.tolist(), counts.tolist())

    def add_bins(self, zeros: int, keys: list[int], values: list[float], counts: list[int]) -> None:
        """Add ``zeros`` latencies of 0 and, for each bin ``keys[i]``, ``counts[i]`` latencies the
        first of which was ``values[i]`` (see :func:`latency_bins`): what :meth:`add` of each
        latency gives (the bins, the count; the sum as DDSketch's add of ``values[i]`` with that
        weight)."""
        sketch = self._sketch
        if zeros:
            sketch.add(0.0, float(zeros))
        store = self._store
        self._touched.update(keys)
        for key, value, count in zip(keys, values, counts):
            weight = float(count)
            store.add(key, weight)
            sketch._count += weight
            sketch._sum += value * weight
            if value < sketch._min:
                sketch._min = value
            if value > sketch._max:
                sketch._max = value

    def merge(self, other: LatencySketch) -> None:
        """Add every latency of ``other`` to this sketch (same relative accuracy required)."""
        self._sketch.merge(other._sketch)
        self._touched.update(key for key, _ in other.to_dict()["bins"])

    def quantile(self, q: float) -> float | None:
        """Latency at quantile ``q`` (0..1), within the relative accuracy; None when empty."""
        value = self._sketch.get_quantile_value(q)
        return None if value is None else float(value)

    def quantiles(self, qs: tuple[float, ...], bins: list[list[Any]]) -> list[float]:
        """:meth:`quantile` of each of ``qs`` (the sketch not empty), read from ``bins``, its
        :meth:`to_dict` bins: DDSketch's own walk, over the bins that hold something only."""
        sketch = self._sketch
        zeros = sketch._zero_count
        values = []
        for q in qs:
            rank = q * (sketch._count - 1)
            if rank < zeros:  # latencies are never negative: no negative store to look in first
                values.append(0.0)
                continue
            rank -= zeros
            running, key = 0.0, bins[-1][0]
            for bin_key, count in bins:
                running += count
                if running > rank:
                    key = bin_key
                    break
            values.append(float(sketch._mapping.value(key)))
        return values

    def to_dict(self, touched: bool = False) -> dict[str, Any]:
        """The sketch as a JSON-friendly dict; :meth:`from_dict` restores it. ``touched``: only
        the bins added to since the last such call (a delta of the sketch: bins only grow, so
        :func:`merge_bins` of it over the sketch's previous dict gives its dict of now)."""
        offset, bins = self._store.offset, self._store.bins
        if touched:
            keys, self._touched = sorted(self._touched), set()
            return {"relative_accuracy": self._relative_accuracy, "zero_count": self._sketch.count - self._store.count,
                    "bins": [[key, bins[key - offset]] for key in keys]}
        return {
            "relative_accuracy": self._relative_accuracy,
            # Latencies of 0 ms sit outside the logarithmic bins.
            "zero_count": self._sketch.count - self._store.count,
            # Sparse: a minute of latencies fills few of the bins the dense store allocates.
            "bins": [[offset + i, n] for i, n in zip(compress(range(len(bins)), bins), compress(bins, bins))],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencySketch:
        """The sketch :meth:`to_dict` described (exact sum, min and max are not kept)."""
        store = DenseStore()
        for key, weight in data["bins"]:
            store.add(int(key), float(weight))
        return cls(data["relative_accuracy"], _store=store, _zero_count=float(data["zero_count"]))


def merge_bins(bins: list[list[Any]], changed: list[list[Any]]) -> list[list[Any]]:
    """A sketch's ``bins`` (``[key, count]`` by key) with the ``changed`` ones replacing theirs."""
    merged = dict(map(tuple, bins))
    merged.update(map(tuple, changed))
    return [[key, merged[key]] for key in sorted(merged)]


def latency_bins(mapping: Any, latencies: np.ndarray, group_of: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sketch bins of latencies of calls in ``n`` groups (``group_of``: each call's group, the
    calls of a group in order), for all groups in one pass: (zeros, bounds, keys, values, counts):
    group ``g`` had ``zeros[g]`` latencies of 0 (or below, counted as 0), and its distinct bins are
    ``bounds[g]:bounds[g + 1]`` of ``keys`` (ascending), each with the first latency that fell in
    it (``values``) and how many did (``counts``)."""
    values = np.maximum(latencies, 0.0)
    positive = values > mapping.min_possible
    zeros = np.bincount(group_of[~positive], minlength=n)
    values, group_of = values[positive], group_of[positive]
    if not len(values):
        empty = np.zeros(0, np.int64)
        return zeros, np.zeros(n + 1, np.int64), empty, values, empty
    keys = _keys(mapping, values)
    low = int(keys.min())
    combined = group_of * (int(keys.max()) - low + 1) + (keys - low)
    _, first, counts = np.unique(combined, return_index=True, return_counts=True)
    bounds = np.searchsorted(group_of[first], np.arange(n + 1))
    return zeros, bounds, keys[first], values[first], counts


def _keys(mapping: Any, values: np.ndarray) -> np.ndarray:
    """``mapping.key(v)`` of each positive value, computed per array: the logarithm in NumPy, and
    in Python (the mapping's own) where NumPy's could round to the other side of a bin's edge."""
    scaled = np.log(values) / math.log(2) * mapping._multiplier
    keys = np.ceil(scaled).astype(np.int64)
    near_edge = np.flatnonzero(np.abs(scaled - np.rint(scaled)) < 1e-6)
    for i in near_edge.tolist():
        keys[i] = mapping.key(float(values[i]))
    return keys


class WindowKey(NamedTuple):
    """What one window aggregates over."""

    tenant_id: str
    agent_id: str
    provider: str
    model: str


#: A window's totals in a delta (:meth:`WindowAggregate.delta_row`), in order; the last two are
#: its latency sketch's zero count and changed bins.
DELTA_FIELDS = ("calls", "errors", "rate_limited", "input_tokens", "output_tokens", "cost_usd", "agent_type",
                "trace_id", "zero_count", "bins")


@dataclass
class WindowAggregate:
    """Running totals of the LLM calls of one key in one window."""

    calls: int = 0
    #: Calls whose status is not ``ok`` (rate limits and timeouts included).
    errors: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency: LatencySketch = field(default_factory=LatencySketch)
    #: Agent type and trace id of the latest call counted (context for the closed window).
    agent_type: str = ""
    trace_id: str = ""

    def add(self, call: LlmCall) -> None:
        """Count one call."""
        self.agent_type = call.agent_type
        self.trace_id = call.trace_id
        self.calls += 1
        self.errors += call.status != "ok"
        self.rate_limited += call.status == "rate_limited"
        self.input_tokens += call.input_tokens
        self.output_tokens += call.output_tokens
        self.cost_usd += call.cost_usd
        self.latency.add(call.latency_ms)

    def merge(self, other: WindowAggregate) -> None:
        """Add ``other``'s totals to these (e.g. to roll minutes up into hours)."""
        self.calls += other.calls
        self.errors += other.errors
        self.rate_limited += other.rate_limited
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        self.latency.merge(other.latency)

    def to_dict(self, touched: bool = False) -> dict[str, Any]:
        """The totals as a JSON-friendly dict (``touched``: of the sketch, the bins added to
        since the last such call only, see :meth:`LatencySketch.to_dict`)."""
        return {
            "calls": self.calls,
            "errors": self.errors,
            "rate_limited": self.rate_limited,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "latency": self.latency.to_dict(touched),
            "agent_type": self.agent_type,
            "trace_id": self.trace_id,
        }

    def delta_row(self) -> list[Any]:
        """The totals as a delta carries them (:data:`DELTA_FIELDS`): a list, not a dict, and of
        the sketch the bins added to since the last delta only (see :meth:`LatencySketch.to_dict`).
        A busy step changes hundreds of windows: the names would be most of its delta's JSON."""
        latency = self.latency.to_dict(touched=True)
        return [self.calls, self.errors, self.rate_limited, self.input_tokens, self.output_tokens, self.cost_usd,
                self.agent_type, self.trace_id, latency["zero_count"], latency["bins"]]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowAggregate:
        """The totals :meth:`to_dict` described."""
        return cls(**{**data, "latency": LatencySketch.from_dict(data["latency"])})


@dataclass(frozen=True)
class ClosedWindow:
    """One key's totals for one window that closed; emitted once per (window, key)."""

    tenant_id: str
    agent_id: str
    agent_type: str
    trace_id: str
    provider: str
    model: str
    #: Window bounds ``[start, end)`` in epoch milliseconds, UTC.
    window_start_ms: int
    window_end_ms: int
    calls: int
    errors: int
    rate_limited: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    #: :meth:`LatencySketch.to_dict` of the window, so minutes merge into longer periods.
    latency_sketch: dict[str, Any]


class Arrival(enum.Enum):
    """How an event arrived relative to its window (the answer of :meth:`WindowStore.add`)."""

    #: Its window has not ended on event time.
    ON_TIME = "on_time"
    #: Its window has ended but is still open for the grace period: the event was applied.
    IN_GRACE = "in_grace"
    #: Its window is closed: the event was only counted in ``late_events``.
    TOO_LATE = "too_late"
    #: Its agent's windows are kept by another shard: only its window's start was noted.
    OTHER_SHARD = "other_shard"


class WindowStore:
    """Tumbling event-time windows of LLM calls.

    Fed one stream partition, the watermark is the greatest event time added. Fed several (the
    alerts role), each call comes with its partition's watermark and the windows close on the
    minimum over the partitions (``close_due(minimum)``).
    """

    def __init__(self, *, size_ms: int = 60_000, grace_ms: int = 10_000) -> None:
        """Windows of ``size_ms``, open ``grace_ms`` after their end for late events."""
        if size_ms <= 0 or grace_ms < 0:
            raise ValueError(f"window size must be > 0 and grace >= 0, got {size_ms}, {grace_ms}")
        self.size_ms = size_ms
        self.grace_ms = grace_ms
        #: Greatest event time added, epoch milliseconds.
        self.watermark_ms = 0
        #: Every window that ends at or before this time is closed.
        self.closed_until_ms = 0
        #: Wall-clock time of the latest :meth:`add`, to tell an idle stream from a busy one.
        self.last_added_ms = 0
        #: Events that came after their window closed.
        self.late_events = 0
        self._open: dict[int, dict[WindowKey, WindowAggregate]] = {}
        #: (start, key) of the windows changed (added to or closed) since the last delta().
        self._changed: set[tuple[int, WindowKey]] = set()
        #: The agents whose windows this store keeps: all when None. For the others' calls only
        #: the window start is noted (an empty entry of ``_open``): closing on the wall clock
        #: closes up to the latest window open in any shard, as one store for all would.
        self.owns: Callable[[str], bool] | None = None

    def add(self, call: LlmCall, *, now_ms: int, watermark_ms: int | None = None) -> Arrival:
        """Count ``call`` in its window; ``now_ms`` is the wall clock (epoch milliseconds).

        ``watermark_ms``, when given, is the watermark of the call's own stream partition (the
        greatest event time of that partition before it): lateness is judged by it, and the
        store's watermark moves only through :meth:`close_due` (with the minimum over the
        partitions). So a call is late only by its own partition's time, however far the other
        partitions ran ahead. Without it the store's own watermark decides and moves with each call.
        """
        self.last_added_ms = max(self.last_added_ms, now_ms)
        at = epoch_ms(call.event_time)
        start = at - at % self.size_ms
        end = start + self.size_ms
        own = self.watermark_ms if watermark_ms is None else watermark_ms
        ours = self.owns is None or self.owns(call.agent_id)
        if end <= self.closed_until_ms or end + self.grace_ms <= own:
            self.late_events += ours
            return Arrival.TOO_LATE
        arrival = Arrival.IN_GRACE if end <= own else Arrival.ON_TIME
        if watermark_ms is None:
            self.watermark_ms = max(self.watermark_ms, at)
        if not ours:
            self._open.setdefault(start, {})
            return Arrival.OTHER_SHARD
        key = WindowKey(call.tenant_id, call.agent_id, call.provider, call.model)
        window = self._open.get(start)
        if window is None:
            window = self._open[start] = {}
        aggregate = window.get(key)
        if aggregate is None:  # not setdefault: a new aggregate (and its sketch) per call costs
            aggregate = window[key] = WindowAggregate()
        aggregate.add(call)
        self._changed.add((start, key))
        return arrival

    def add_calls(self, calls: Batch, now_ms: int) -> None:
        """Count a batch of calls, each judged late by its own partition's watermark
        (``calls.watermarks``): the same totals as :meth:`add` of each call with it, added a
        window and key at a time."""
        if not calls.n:
            return
        self.last_added_ms = max(self.last_added_ms, now_ms)
        at = calls.at
        starts = at - at % self.size_ms
        ends = starts + self.size_ms
        late = (ends <= self.closed_until_ms) | (ends + self.grace_ms <= calls.watermarks)
        if self.owns is None:
            self.late_events += int(late.sum())
            kept = np.flatnonzero(~late)
        else:
            ours = calls.matches("agent_id", self.owns)
            self.late_events += int((late & ours).sum())
            for start in np.unique(starts[~late]).tolist():
                self._open.setdefault(start, {})
            kept = np.flatnonzero(~late & ours)
        if not len(kept):
            return
        names = ("tenant_id", "agent_id", "provider", "model")
        columns = [calls.codes(name) for name in names]
        distinct_starts, start_codes = np.unique(starts[kept], return_inverse=True)
        key = combine((start_codes, len(distinct_starts)), *((codes[kept], len(values)) for codes, values in columns))
        order, lo, hi = groups(key)
        taken = kept[order]  # grouped by window and key, each group in call order
        not_ok = (~calls.is_in("status", {"ok"}))[taken].astype(np.int64)
        limited = calls.is_in("status", {"rate_limited"})[taken].astype(np.int64)
        sums = [np.add.reduceat(column, lo).tolist() for column in (
            not_ok, limited, calls.numbers("input_tokens")[taken].astype(np.int64),
            calls.numbers("output_tokens")[taken].astype(np.int64))]
        costs = calls.numbers("cost_usd")[taken].tolist()
        zeros, bounds, bin_keys, bin_values, bin_counts = latency_bins(
            _mapping(RELATIVE_ACCURACY), calls.numbers("latency_ms")[taken], np.repeat(np.arange(len(lo)), hi - lo), len(lo))
        zeros, bounds = zeros.tolist(), bounds.tolist()
        bin_keys, bin_values, bin_counts = bin_keys.tolist(), bin_values.tolist(), bin_counts.tolist()
        agent_types, agent_type_values = calls.codes("agent_type")
        traces, trace_values = calls.codes("trace_id")
        last = taken[hi - 1]
        firsts = taken[lo].tolist()
        for g, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
            first = firsts[g]
            window_key = WindowKey(*(values[codes[first]] for codes, values in columns))
            start = int(starts[first])
            window = self._open.get(start)
            if window is None:
                window = self._open[start] = {}
            aggregate = window.get(window_key)
            if aggregate is None:
                aggregate = window[window_key] = WindowAggregate()
            aggregate.agent_type = agent_type_values[agent_types[last[g]]]
            aggregate.trace_id = trace_values[traces[last[g]]]
            aggregate.calls += b - a
            aggregate.errors += sums[0][g]
            aggregate.rate_limited += sums[1][g]
            aggregate.input_tokens += sums[2][g]
            aggregate.output_tokens += sums[3][g]
            # One addition after the other, in call order: the same float as call by call.
            aggregate.cost_usd = functools.reduce(operator.add, costs[a:b], aggregate.cost_usd)
            first_bin, end_bin = bounds[g], bounds[g + 1]
            aggregate.latency.add_bins(zeros[g], bin_keys[first_bin:end_bin], bin_values[first_bin:end_bin],
                                       bin_counts[first_bin:end_bin])
            self._changed.add((start, window_key))

    def close_due(self, watermark_ms: int | None = None) -> list[ClosedWindow]:
        """Close the windows whose end + grace the watermark reached.

        ``watermark_ms`` moves the watermark forward (e.g. to the minimum over partitions);
        without it the store's own watermark decides.
        """
        if watermark_ms is not None:
            self.watermark_ms = max(self.watermark_ms, watermark_ms)
        return self._close_until(self.watermark_ms - self.grace_ms)

    def close_idle(self, now_ms: int, idle_ms: int) -> list[ClosedWindow]:
        """On a wall-clock timer: when nothing was added for ``idle_ms``, close the windows whose
        end + grace the wall clock ``now_ms`` passed.

        Only an idle stream is closed by wall clock: a busy one (e.g. catching up on a backlog
        after a restart) is ahead of its event time, and closing by wall clock would turn its
        on-time events into late ones.
        """
        if now_ms - self.last_added_ms < idle_ms:
            return []
        # Only what is open closes: the wall clock says nothing about windows no event opened,
        # so a quiet store does not turn the next burst of older events into late ones.
        limit_ms = now_ms - self.grace_ms
        due = [start + self.size_ms for start in self._open if start + self.size_ms <= limit_ms]
        return self._close_until(max(due)) if due else []

    def _close_until(self, limit_ms: int) -> list[ClosedWindow]:
        if limit_ms <= self.closed_until_ms:
            return []
        self.closed_until_ms = limit_ms
        closed: list[ClosedWindow] = []
        for start in sorted(s for s in self._open if s + self.size_ms <= limit_ms):
            for key, agg in sorted(self._open.pop(start).items()):
                closed.append(_closed(key, start, start + self.size_ms, agg))
                self._changed.add((start, key))
        return closed

    def size(self) -> int:
        """Open windows held (one per key and window start)."""
        return sum(map(len, self._open.values()))

    def to_dict(self, windows: bool = True) -> dict[str, Any]:
        """The store's whole state as a JSON-friendly dict (``windows=False``: its scalars only)."""
        state: dict[str, Any] = {
            "size_ms": self.size_ms,
            "grace_ms": self.grace_ms,
            "watermark_ms": self.watermark_ms,
            "closed_until_ms": self.closed_until_ms,
            "last_added_ms": self.last_added_ms,
            "late_events": self.late_events,
            # With shards, starts of windows only other shards hold count too (see ``owns``).
            "open_starts": sorted(self._open),
        }
        if windows:
            state["windows"] = [
                {"start_ms": start, "key": list(key), "totals": agg.to_dict()}
                for start, aggs in sorted(self._open.items())
                for key, agg in sorted(aggs.items())
            ]
        return state

    def delta(self) -> dict[str, Any]:
        """What changed since the last delta: the scalars of :meth:`to_dict`, and each window
        changed as ``[start_ms, tenant_id, agent_id, provider, model, totals]``, ``totals`` None
        for a window closed, else :meth:`WindowAggregate.delta_row` (the bins of the sketch that
        changed only). :meth:`apply_delta` brings a :meth:`to_dict` to the state after it."""
        windows = []
        for start, key in sorted(self._changed):
            aggregate = self._open.get(start, {}).get(key)
            windows.append([start, *key, None if aggregate is None else aggregate.delta_row()])
        self._changed.clear()
        return {**self.to_dict(windows=False), "windows": windows}

    @staticmethod
    def apply_delta(data: dict[str, Any], delta: dict[str, Any]) -> None:
        """Bring ``data`` (a :meth:`to_dict`) to the state after ``delta``."""
        WindowStore.apply_deltas(data, [delta])

    @staticmethod
    def apply_deltas(data: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        """:meth:`apply_delta` of each of ``deltas`` in order, with the windows indexed and sorted
        once for all of them (a busy store holds thousands)."""
        if not deltas:
            return
        windows = {(w["start_ms"], tuple(w["key"])): w for w in data["windows"]}
        for delta in deltas:
            for window in delta["windows"]:
                if isinstance(window, dict):  # written before deltas carried windows as lists
                    slot, totals = (window["start_ms"], tuple(window["key"])), window["totals"]
                    if totals is not None:
                        latency = totals["latency"]
                        totals = [*(totals[name] for name in DELTA_FIELDS[:-2]), latency["zero_count"], latency["bins"]]
                else:
                    slot, totals = (window[0], tuple(window[1:5])), window[5]
                if totals is None:
                    windows.pop(slot, None)
                    continue
                before = windows.get(slot)
                bins = totals[-1] if before is None else merge_bins(before["totals"]["latency"]["bins"], totals[-1])
                windows[slot] = {"start_ms": slot[0], "key": list(slot[1]), "totals": {
                    **dict(zip(DELTA_FIELDS[:-2], totals)),
                    "latency": {"relative_accuracy": RELATIVE_ACCURACY if before is None else
                                before["totals"]["latency"]["relative_accuracy"],
                                "zero_count": totals[-2], "bins": bins}}}
            data.update((name, value) for name, value in delta.items() if name != "windows")  # the scalars
        data["windows"] = [windows[slot] for slot in sorted(windows)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowStore:
        """The store :meth:`to_dict` described, open windows included."""
        store = cls(size_ms=data["size_ms"], grace_ms=data["grace_ms"])
        store.watermark_ms = data["watermark_ms"]
        store.closed_until_ms = data["closed_until_ms"]
        store.last_added_ms = data["last_added_ms"]
        store.late_events = data["late_events"]
        for start in data.get("open_starts", ()):
            store._open[start] = {}
        for window in data["windows"]:
            aggs = store._open.setdefault(window["start_ms"], {})
            aggs[WindowKey(*window["key"])] = WindowAggregate.from_dict(window["totals"])
        return store


def _closed(key: WindowKey, start_ms: int, end_ms: int, agg: WindowAggregate) -> ClosedWindow:
    # A window exists only once a call landed in it, so its sketch is never empty.
    sketch = agg.latency.to_dict()
    p50, p95, p99 = agg.latency.quantiles((0.5, 0.95, 0.99), sketch["bins"])
    return ClosedWindow(
        tenant_id=key.tenant_id,
        agent_id=key.agent_id,
        agent_type=agg.agent_type,
        trace_id=agg.trace_id,
        provider=key.provider,
        model=key.model,
        window_start_ms=start_ms,
        window_end_ms=end_ms,
        calls=agg.calls,
        errors=agg.errors,
        rate_limited=agg.rate_limited,
        input_tokens=agg.input_tokens,
        output_tokens=agg.output_tokens,
        cost_usd=agg.cost_usd,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        latency_sketch=sketch,
    )
