"""Crash points for the reliability tests: ``kill -9`` of a worker at an exact step.

``EZ_FAILPOINTS="clickhouse.after_record=3,lake.before_commit=1"`` makes the 3rd pass through
``failpoint("clickhouse.after_record")`` kill its own process with SIGKILL, as an operator's
``kill -9`` would. Unset (always, outside those tests), a failpoint is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_ENV = "EZ_FAILPOINTS"


def _parse(spec: str) -> dict[str, int]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition("=")
        points[name.strip()] = int(count or 1)
    return points


_armed = _parse(os.environ.get(_ENV, ""))
_passes: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Die here with SIGKILL if ``name`` is armed and this is the armed pass."""
    if name not in _armed:
        return
    _passes[name] += 1
    if _passes[name] == _armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
