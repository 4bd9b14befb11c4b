"""Shared by the ClickHouse sink tests: batches built exactly as the loop builds them."""

from __future__ import annotations

import pyarrow as pa

from connectors.kafka.codec import default_codec, encode
from connectors.kafka.events import Event
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, TABLES, OffsetRange, SinkBatch

#: Topic prefix of the batches (the sink stores topic names as given).
PREFIX = "it."


def make_batch(events: list[Event], partition: int = 0, first: int = 0) -> SinkBatch:
    """The batch the loop hands over for ``events`` read at offsets ``first…`` of ``partition``."""
    kind = type(events[0])
    decoded = default_codec().decode_batch_arrow([encode(kind.EVENT, e.to_record()) for e in events], kind.EVENT)
    assert decoded.failures == []
    n = decoded.table.num_rows
    rows = decoded.table.append_column(PARTITION_COLUMN, pa.array([partition] * n, pa.int32()))
    rows = rows.append_column(OFFSET_COLUMN, pa.array(range(first, first + n), pa.int64()))
    offsets = OffsetRange(PREFIX + kind.TOPIC, partition, first, first + n - 1)
    return SinkBatch(TABLES[kind.TOPIC], kind.EVENT, rows, (offsets,))


def combine(batches: list[SinkBatch]) -> SinkBatch:
    """One batch of several partitions' batches of one table, as the loop hands a flush over."""
    return SinkBatch(batches[0].table, batches[0].event, pa.concat_tables([b.rows for b in batches]),
                     tuple(r for b in batches for r in b.ranges))
