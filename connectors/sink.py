"""What every sink (the lake, ClickHouse) implements, and what the shared batching loop hands it.

The loop (``streams/sinks/runner.py``) is the one batching and commit mechanism: it consumes in
batches, keeps one buffer per (topic, partition), decodes each buffer in one call, dead-letters
what cannot be decoded and hands the rest to :meth:`Sink.write` as one Arrow table. A sink's
write is durable when it returns and records how far it got, so on (re)assignment the loop asks
:meth:`Sink.resume_points` where to start: the sink's own record is the truth, never the
consumer group's committed offsets.

Errors decide what happens next by type: :class:`~connectors.errors.TransientError` (the sink is
down or slow) is retried with back-off while the partitions stay paused;
:class:`~connectors.errors.TerminalError` (the data is wrong) sends the batch to the DLQ.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import pyarrow as pa

#: Catalogue topic -> table name, in the lake and in ClickHouse.
TABLES: dict[str, str] = {
    "agent.tasks": "task_events",
    "agent.llm_calls": "llm_calls",
    "agent.telemetry": "telemetry",
    "agent.alerts": "alerts",
    "agent.llm_windows": "llm_windows",
    "inference.results": "inference_results",
}

#: Columns the loop adds to every decoded row: where in Kafka it came from.
PARTITION_COLUMN = "kafka_partition"
OFFSET_COLUMN = "kafka_offset"


@dataclass(frozen=True)
class OffsetRange:
    """Offsets ``first..last`` (inclusive) of one partition covered by a batch.

    The range covers every offset read, including those of messages that went to the DLQ, so
    consecutive ranges of a partition leave no gap.
    """

    topic: str
    partition: int
    first: int
    last: int

    @property
    def token(self) -> str:
        """Identifies this batch wherever it is written: same offsets, same token."""
        return f"{self.topic}:{self.partition}:{self.first}:{self.last}"


def batch_token(ranges: tuple[OffsetRange, ...]) -> str:
    """Identifies a batch of one topic's ranges wherever it is written: ``topic:p:first:last`` for
    one range (:attr:`OffsetRange.token`), ``topic:p:first:last+p:first:last…`` by partition for
    several. Kafka topic names cannot hold ``:`` or ``+``, so :func:`parse_batch_token` reads it back.
    """
    ordered = sorted(ranges, key=lambda r: r.partition)
    if not ordered or any(r.topic != ordered[0].topic for r in ordered):
        raise ValueError(f"a batch holds ranges of one topic, got {ranges!r}")
    return f"{ordered[0].topic}:" + "+".join(f"{r.partition}:{r.first}:{r.last}" for r in ordered)


def parse_batch_token(token: str) -> tuple[OffsetRange, ...]:
    """The ranges of a :func:`batch_token`."""
    topic, _, spans = token.partition(":")
    ranges = []
    for span in spans.split("+"):
        partition, first, last = (int(part) for part in span.split(":"))
        ranges.append(OffsetRange(topic, partition, first, last))
    return tuple(ranges)


@dataclass(frozen=True)
class SinkBatch:
    """Decoded rows of one table, with the offset ranges they came from.

    ``rows`` has the schema's columns (see :meth:`connectors.kafka.codec.Codec.arrow_schema`) plus
    :data:`PARTITION_COLUMN` (int32) and :data:`OFFSET_COLUMN` (int64). It may have no rows when
    every message of the ranges went to the DLQ; the sink still records the ranges.
    """

    table: str
    event: str
    rows: pa.Table
    ranges: tuple[OffsetRange, ...]


@dataclass(frozen=True)
class ResumePoint:
    """Where a partition starts after an assignment.

    ``next_offset`` is the first offset to read. ``replay``, when not empty, is a batch the sink
    recorded but may not have finished writing, whose ranges include this partition's offsets
    just before ``next_offset`` and may include other partitions of the topic: the loop first
    reads exactly those ranges again and writes them as one batch (so an idempotent sink
    recognises it), and records nothing else of the partition until it is written.
    """

    next_offset: int
    replay: tuple[OffsetRange, ...] = ()


class Sink(ABC):
    """A destination for decoded batches. Clients are created in :meth:`setup`, not ``__init__``."""

    #: Role name, also used in consumer group and transaction ids: ``lake``, ``clickhouse``.
    name: str

    @abstractmethod
    def setup(self) -> None:
        """Connect, create or migrate tables. Raises TransientError when the store is down."""

    @abstractmethod
    def resume_points(self, topic: str, partitions: list[int]) -> dict[int, ResumePoint]:
        """Where each partition of ``topic`` resumes; partitions never written are left out."""

    @abstractmethod
    def write(self, batch: SinkBatch) -> None:
        """Write ``batch`` (ranges of one topic, one per partition) durably and record its ranges
        (atomically or idempotently).

        Called again with the very same batch after a TransientError or a crash: must not
        duplicate rows.
        """

    def recorded(self, batch: SinkBatch) -> bool:
        """Whether the store holds a record of exactly this batch from an earlier attempt that may
        have written part of it: then the batch must be written whole, as it is, even for
        partitions this worker lost meanwhile (their new owner replays the same batch). A sink
        whose write records nothing before it is durable (one atomic commit) has none.
        """
        return False

    def close(self) -> None:
        """Release clients."""
