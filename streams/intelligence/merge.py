"""Event time across partitions: one order for a backlog, one watermark per partition.

Kafka hands a consumer its partitions in chunks: catching up on a backlog, a fetch may hold every
call of one partition before any call of the next. Rules fed in that order would see one
partition's future before another's past. :class:`CatchUpMerge` holds the calls of a backlog per
partition and releases them in one order, whatever the fetches were: a k-way merge of the
partitions by the event time of their next call, which waits while a partition that still has
backlog has nothing fetched. The order is a function of each partition's sequence alone, so a
replay from any offset releases the calls of the backlog in the order the first run would
have, and live traffic, whose calls arrive in about that order, gives the same alerts and windows.

:class:`Watermarks` keeps the event time of each partition (the greatest released) and the
minimum over the partitions that are not idle: windows and days close on that minimum, and a
call is late only by its own partition's time.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

Partition = tuple[str, int]


class CatchUpMerge:
    """The calls of the backlog of ``ends`` (partition -> offset the backlog ends at), released
    in one order; rows need an ``event_time`` in epoch milliseconds.

    A partition holds the release back while it has backlog left (its fetched position is before
    its end) and nothing fetched; one that fetched nothing for ``stall_s`` stops holding it
    back (a backlog ending in records the consumer never returns, such as aborted transactions).
    """

    def __init__(self, ends: dict[Partition, int], positions: dict[Partition, int], stall_s: float = 15.0) -> None:
        self._ends = dict(ends)
        self._fetched = {tp: positions[tp] for tp in ends}
        self._buffers: dict[Partition, deque[tuple[int, Any]]] = {tp: deque() for tp in ends}
        self._heap: list[tuple[int, Partition]] = []
        self._stall_s = stall_s
        self._heard = {tp: time.monotonic() for tp in ends}
        #: Partitions with backlog left and nothing fetched: the release waits for them.
        self.waiting = {tp for tp in ends if self._fetched[tp] < self._ends[tp]}
        #: Greatest event time fetched per partition; the partition, least and greatest time of
        #: the run of calls being taken in (a fetch hands over runs of one partition);
        #: ``skew_ms``: how far behind the calls fetched before it from other partitions a call
        #: was, at most (what a single watermark would have counted late).
        self._fetched_max: dict[Partition, int] = {}
        self._run: tuple[Partition, int, int] | None = None
        self.skew_ms = 0
        self.held = 0

    def fetched(self, tp: Partition, offset: int, row: Any | None) -> None:
        """Message ``offset`` of ``tp`` was fetched; ``row`` is its call (None when it has none to
        release: undecodable, invalid, from the future)."""
        self._fetched[tp] = offset + 1
        self._heard[tp] = time.monotonic()
        if row is not None:
            buffer = self._buffers[tp]
            if not buffer:
                heapq.heappush(self._heap, (row.event_time, tp))
            buffer.append((offset, row))
            self.held += 1
            t = row.event_time
            run = self._run
            if run is None or run[0] != tp:
                self._end_run()
                self._run = (tp, t, t)
            elif not run[1] <= t <= run[2]:
                self._run = (tp, min(run[1], t), max(run[2], t))
        if tp in self.waiting and (self._buffers[tp] or self._fetched[tp] >= self._ends[tp]):
            self.waiting.discard(tp)

    def release(self) -> Iterator[tuple[Partition, Any]]:
        """The calls that can go, in the merge's order, each with its partition."""
        self._end_run()
        self._expire()
        heap, buffers = self._heap, self._buffers
        while heap and not self.waiting:
            _, tp = heapq.heappop(heap)
            buffer = buffers[tp]
            _, row = buffer.popleft()
            self.held -= 1
            if buffer:
                heapq.heappush(heap, (buffer[0][1].event_time, tp))
            elif self._fetched[tp] < self._ends[tp]:
                self.waiting.add(tp)
            yield tp, row

    def buffered(self, tp: Partition) -> int:
        return len(self._buffers.get(tp, ()))

    def position(self, tp: Partition, fetched: int) -> int:
        """Where a restart must read ``tp`` from: its first call not released yet, else
        ``fetched`` (the consumer's position)."""
        buffer = self._buffers.get(tp)
        return buffer[0][0] if buffer else fetched

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
        if not self.waiting:
            return
        now = time.monotonic()
        for tp in [tp for tp in self.waiting if now - self._heard[tp] >= self._stall_s]:
            self.waiting.discard(tp)
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
