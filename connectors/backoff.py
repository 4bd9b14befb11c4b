"""The one back-off of the project: waits that double from a first to a last delay.

Used wherever something is tried again: a sink's write or resume-point read that failed with a
:class:`~connectors.errors.TransientError` (``streams/sinks/runner.py``), a worker's role that
crashed (``streams/worker.py``). What to do while waiting differs (poll the consumer, let a
rebalance in, wait on a stop event); how long to wait does not.
"""

from __future__ import annotations


class Backoff:
    """``next()`` gives ``first``, then twice the previous delay, up to ``last``; ``reset()``
    starts again from ``first`` (after a success)."""

    def __init__(self, first: float, last: float) -> None:
        if not 0 < first <= last:
            raise ValueError(f"back-off delays must satisfy 0 < first <= last, got {first}, {last}")
        self.first = first
        self.last = last
        self._delay = first

    def next(self) -> float:
        """The delay to wait now; the one after it doubles."""
        delay = self._delay
        self._delay = min(delay * 2, self.last)
        return delay

    def reset(self) -> None:
        self._delay = self.first
