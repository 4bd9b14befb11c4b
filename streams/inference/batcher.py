"""Dynamic batching: requests queue up; the device takes up to a batch of texts at a time.

A batch is taken when it is full (``max_batch`` texts) or when its oldest request has waited
``max_wait_s``, whichever comes first. Requests leave in arrival order, so the worker can commit
each partition's offset up to the last request it answered. The queue is bounded by the worker,
which pauses its partitions above ``max_queue`` texts (:attr:`DynamicBatcher.pending_texts`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Work:
    """One consumed message on its way through the worker, in arrival order.

    ``texts`` is empty for a request answered without the model (an error result) and for a
    message that only goes to its DLQ; those pass through the batcher all the same, so that
    every message leaves in the order it came.
    """

    partition: int
    offset: int
    #: The decoded request, or None for a message that could not be decoded.
    request: Any
    texts: list[str] = field(default_factory=list)
    #: Why the request is answered with an error instead of a result.
    error: str | None = None
    received: float = field(default_factory=time.monotonic)
    #: Set by the compute step: one vector per text, and timings.
    vectors: Any = None
    queue_ms: float = 0.0
    compute_ms: float = 0.0


class DynamicBatcher:
    """A thread-safe FIFO of :class:`Work` that hands out batches of at most ``max_batch`` texts.

    A single request with more texts than ``max_batch`` is a batch of its own (the model splits it).
    """

    def __init__(self, max_batch: int, max_wait_s: float) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._items: deque[Work] = deque()
        self._texts = 0
        self._cond = threading.Condition()
        self._closed = False

    @property
    def pending_texts(self) -> int:
        """Texts waiting for the device."""
        return self._texts

    @property
    def closed(self) -> bool:
        """Closed and empty: no batch will come any more."""
        return self._closed and not self._items

    def __len__(self) -> int:
        return len(self._items)

    def put(self, work: Work) -> None:
        with self._cond:
            self._items.append(work)
            self._texts += len(work.texts)
            if self._texts >= self.max_batch or not work.texts:
                self._cond.notify()
            elif len(self._items) == 1:
                self._cond.notify()

    def close(self) -> None:
        """Wake :meth:`take` for good; it returns what is left, then empty lists."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, idle_timeout_s: float = 0.1) -> list[Work]:
        """The next batch, in arrival order; empty if nothing arrived within ``idle_timeout_s``."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(idle_timeout_s)
            if not self._items:
                return []
            deadline = self._items[0].received + self.max_wait_s
            while (self._texts < self.max_batch and not self._closed
                   and all(w.texts for w in self._items)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[Work] = []
            texts = 0
            while self._items:
                n = len(self._items[0].texts)
                if batch and texts + n > self.max_batch:
                    break
                batch.append(self._items.popleft())
                texts += n
            self._texts -= texts
            return batch
