"""Event time across partitions: one order for a backlog, one watermark per partition.

Kafka hands a consumer its partitions in chunks: catching up on a backlog, a fetch may hold every
call of one partition before any call of the next. Rules fed in that order would see one
partition's future before another's past. :class:`CatchUpMerge` holds the calls of a backlog per
partition and releases them in one order, whatever the fetches were: a k-way merge of the
partitions by the event time of their next call, released only as far as no partition with
backlog left to fetch can still put a call before it. The order is a function of each
partition's sequence alone, so a replay releases the calls of a backlog in the same order
whatever Kafka's fetches were, and live traffic, whose calls arrive in about that order, gives
the same alerts and windows.

:class:`Watermarks` keeps the event time of each partition (the greatest released) and the
minimum over the partitions that are not idle: windows and days close on that minimum, and a
call is late only by its own partition's time.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import pyarrow as pa

Partition = tuple[str, int]


class CatchUpMerge:
    """The calls of the backlog of ``ends`` (partition -> offset the backlog ends at), released
    in one order; taken in and released as decoded tables.

    The order is a k-way merge's by (event time, partition) of each partition's next call. Said
    another way, which is how it is computed: a stable sort of all the calls by (*key*,
    partition), a call's key being the greatest event time of its partition up to it. Keys never
    fall along a partition, so a partition's future calls all come after (its latest key, it): a
    call goes once its (key, partition) is below that bound of every partition with backlog left.
    A partition with backlog left that fetched nothing for ``stall_s`` stops bounding the others
    (a backlog ending in records the consumer never returns, such as aborted transactions).
    """

    def __init__(self, ends: dict[Partition, int], positions: dict[Partition, int], stall_s: float = 15.0) -> None:
        self._ends = dict(ends)
        self._fetched = {tp: positions[tp] for tp in ends}
        #: Per partition: held calls as chunks of (keys, offsets, calls), in offset order.
        self._held: dict[Partition, deque[tuple[np.ndarray, np.ndarray, pa.Table]]] = {tp: deque() for tp in sorted(ends)}
        self._count = {tp: 0 for tp in ends}
        #: Latest key per partition (None: no call yet, so nothing of the others can go).
        self._key: dict[Partition, int | None] = {tp: None for tp in ends}
        self._stall_s = stall_s
        self._heard = {tp: time.monotonic() for tp in ends}
        #: Greatest event time fetched per partition; the partition, least and greatest time of
        #: the run of calls being taken in (a fetch hands over runs of one partition);
        #: ``skew_ms``: how far behind the calls fetched before it from other partitions a call
        #: was, at most (what a single watermark would have counted late).
        self._fetched_max: dict[Partition, int] = {}
        self._run: tuple[Partition, int, int] | None = None
        self.skew_ms = 0
        self.held = 0

    def fetched(self, tp: Partition, end: int, offsets: np.ndarray, calls: pa.Table, at: np.ndarray) -> None:
        """A run of ``tp``'s messages was fetched, up to offset ``end`` (exclusive); ``calls`` are
        its calls to release (a decoded table, ``at`` their event times, ``offsets`` their offsets),
        in offset order (messages without one, undecodable, invalid or from the future, are left
        out)."""
        self._fetched[tp] = end
        self._heard[tp] = time.monotonic()
        if not len(at):
            return
        key = self._key[tp]
        keys = np.maximum.accumulate(at if key is None else np.maximum(at, key))
        self._key[tp] = int(keys[-1])
        self._held[tp].append((keys, offsets, calls))
        self._count[tp] += len(at)
        self.held += len(at)
        least, most = int(at.min()), int(at.max())
        run = self._run
        if run is None or run[0] != tp:
            self._end_run()
            self._run = (tp, least, most)
        else:
            self._run = (tp, min(run[1], least), max(run[2], most))

    def behind(self) -> set[Partition]:
        """Partitions with backlog left to fetch or release."""
        return {tp for tp, end in self._ends.items() if self._fetched[tp] < end or self._count[tp]}

    def release(self) -> tuple[pa.Table, np.ndarray, list[Partition]] | None:
        """The calls that can go now, in the merge's order: (calls, the index in partitions of
        each call's partition, partitions); None when none can."""
        self._end_run()
        self._expire()
        bounds = [(self._key[tp], tp) for tp, end in self._ends.items() if self._fetched[tp] < end]
        if any(key is None for key, _ in bounds):
            return None  # a partition with backlog and no call yet: anything may come before it
        bound = min(bounds) if bounds else None
        keys: list[np.ndarray] = []
        tables: list[pa.Table] = []
        taken_of: list[int] = []
        partitions: list[Partition] = []
        for tp, chunks in self._held.items():
            taken = 0
            while chunks:
                chunk_keys, offsets, table = chunks[0]
                if bound is None:
                    n = len(chunk_keys)
                elif tp < bound[1]:  # (key, tp) < (bound key, bound tp): key <= bound key
                    n = int(np.searchsorted(chunk_keys, bound[0], side="right"))
                else:
                    n = int(np.searchsorted(chunk_keys, bound[0], side="left"))
                if n == 0:
                    break
                keys.append(chunk_keys[:n])
                tables.append(table.slice(0, n))
                taken += n
                if n == len(chunk_keys):
                    chunks.popleft()
                else:
                    chunks[0] = (chunk_keys[n:], offsets[n:], table.slice(n))
                    break
            if taken:
                taken_of.append(taken)
                partitions.append(tp)
                self._count[tp] -= taken
        if not partitions:
            return None
        calls = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        self.held -= calls.num_rows
        which = np.repeat(np.arange(len(partitions)), taken_of)
        if len(partitions) == 1:
            return calls, which, partitions
        # Stable: equal (key, partition) keep their offset order.
        order = np.lexsort((which, np.concatenate(keys)))
        return calls.take(order), which[order], partitions

    def buffered(self, tp: Partition) -> int:
        return self._count.get(tp, 0)

    def position(self, tp: Partition, fetched: int) -> int:
        """Where a restart must read ``tp`` from: its first call not released yet, else
        ``fetched`` (the consumer's position)."""
        chunks = self._held.get(tp)
        return int(chunks[0][1][0]) if chunks else fetched

    def done(self) -> bool:
        """The whole backlog was released."""
        return not self.held and all(self._fetched[tp] >= end for tp, end in self._ends.items())

    def _end_run(self) -> None:
        if self._run is None:
            return
        tp, least, most = self._run
        self._run = None
        others = [t for other, t in self._fetched_max.items() if other != tp]
        if others:
            self.skew_ms = max(self.skew_ms, max(others) - least)
        self._fetched_max[tp] = max(self._fetched_max.get(tp, most), most)

    def _expire(self) -> None:
        now = time.monotonic()
        for tp, end in self._ends.items():
            if self._fetched[tp] < end and now - self._heard[tp] >= self._stall_s:
                self._ends[tp] = self._fetched[tp]


class Watermarks:
    """The event time of each partition (greatest released) and the minimum over those heard from
    within ``idle_s`` of the wall clock, or held by a catch-up: what windows and days close on."""

    def __init__(self, idle_s: float, saved: dict[Partition, int] | None = None) -> None:
        self.idle_s = idle_s
        self.of: dict[Partition, int] = dict(saved or {})
        now = time.monotonic()
        #: A partition restored from a checkpoint counts as heard at activation.
        self._heard = {tp: now for tp in self.of}

    def heard(self, tp: Partition, at_mono: float) -> None:
        self._heard[tp] = at_mono

    def low(self, holding: set[Partition] | frozenset = frozenset()) -> int | None:
        """The minimum over the partitions not idle (or in ``holding``); None when all are idle."""
        now = time.monotonic()
        live = [t for tp, t in self.of.items() if tp in holding or now - self._heard[tp] < self.idle_s]
        return min(live) if live else None

    def skew(self) -> int:
        """How far the partitions' event times are apart now (0 with fewer than two)."""
        now = time.monotonic()
        live = [t for tp, t in self.of.items() if now - self._heard[tp] < self.idle_s]
        return max(live) - min(live) if len(live) > 1 else 0
