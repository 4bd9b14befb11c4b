"""Shards of the alerts role: which subjects a shard's rules keep state for.

With ``EZ_ALERTS_SHARDS`` = n above 1, n processors share the rules' subjects: shard ``i`` keeps
the state (and raises the alerts) of the subjects whose CRC-32 is ``i`` modulo n: budgets by
tenant and by agent, error rates by provider/model, windows by agent, silent agents by agent,
stuck tasks by task. Rate-limit storms are kept whole by shard 0 (a storm resolves on the wall
clock only while one fires anywhere, so their state cannot be split), and they count only the
rate-limited calls.

Every shard reads every event: the clocks that decide lateness and the windows' movement (the
partitions' watermarks, the sliding windows' clocks, the window starts open) are the same in
each, so a subject's state in its shard is, event after event, the state it has in one processor
for all subjects. That is what keeps the shards exact; what they share out is the rules' state
and work, not the reading: every shard consumes, decodes and checks every event (about two
thirds of one processor's cost per event, docs/intelligence.md "Shards").
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple


class Shard(NamedTuple):
    """Shard ``index`` of ``count``."""

    index: int
    count: int

    def owns(self, subject: Any) -> bool:
        """Whether this shard keeps the state of ``subject`` (a tenant, agent, task id, or
        ``provider/model``); a null subject is the empty string."""
        return zlib.crc32(("" if subject is None else str(subject)).encode()) % self.count == self.index

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"
