"""Crash points for the reliability tests: ``kill -9`` of a worker at an exact step, and more.

``EZ_FAILPOINTS="clickhouse.after_record=3,lake.before_commit=1"`` makes the 3rd pass through
``failpoint("clickhouse.after_record")`` kill its own process with SIGKILL, as an operator's
``kill -9`` would. Two more actions follow the pass number after a colon:

- ``name=N:term`` sends SIGTERM to the process at the Nth pass (a rolling restart at that exact
  step) and makes that call return True, so the loop that passed it stops at once too;
- ``name=N:fail*K`` raises :class:`~connectors.errors.TransientError` at passes N to N+K-1 (a
  store that is unavailable for a while at that step).
- ``name=N:crash`` raises :class:`FailpointCrash` (a bug, not a store's error) at pass N (``*K``
  for passes N to N+K-1): the role running it crashes, and its worker starts it again.

Unset (always, outside those tests), a failpoint is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from dataclasses import dataclass

from connectors.errors import TransientError

_ENV = "EZ_FAILPOINTS"


class FailpointCrash(RuntimeError):
    """A crash that a failpoint caused (``name=N:crash``)."""


@dataclass(frozen=True)
class _Point:
    at: int
    action: str = "kill"
    times: int = 1


def _parse(spec: str) -> dict[str, _Point]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, how = item.partition("=")
        count, _, action = how.partition(":")
        action, _, times = action.partition("*")
        points[name.strip()] = _Point(int(count or 1), action.strip() or "kill", int(times or 1))
    return points


_armed = _parse(os.environ.get(_ENV, ""))
_passes: Counter[str] = Counter()


def failpoint(name: str) -> bool:
    """Act here if ``name`` is armed and this is an armed pass; True when told to stop (``term``)."""
    point = _armed.get(name)
    if point is None:
        return False
    _passes[name] += 1
    passes = _passes[name]
    if point.action == "fail":
        if point.at <= passes < point.at + point.times:
            raise TransientError(f"failpoint {name}: pass {passes} fails (EZ_FAILPOINTS)")
        return False
    if point.action == "crash":
        if point.at <= passes < point.at + point.times:
            raise FailpointCrash(f"failpoint {name}: pass {passes} crashes (EZ_FAILPOINTS)")
        return False
    if passes != point.at:
        return False
    if point.action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
        return True
    os.kill(os.getpid(), signal.SIGKILL)
    return False
