"""Builds lake batches the way the sink loop does, and a writer process for the concurrency test.

``python -m tests.integration.apps.lake_writer GROUP PARTITION COMMITS ROWS START_AT`` waits
until the wall clock reaches ``START_AT`` (so that several writers start together), then writes
``COMMITS`` consecutive batches of ``ROWS`` llm_call rows of ``PARTITION`` through a
:class:`~connectors.lake.sink.LakeSink`. The lake comes from the ``EZ_*`` environment.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from connectors.kafka.codec import default_codec, encode
from connectors.lake.sink import LakeSink
from connectors.settings import load_settings
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, TABLES, OffsetRange, SinkBatch

TOPIC = "agent.llm_calls"
DAY = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)


def cost(partition: int, offset: int) -> float:
    """The cost_usd of the llm_call at ``partition``/``offset``: every row tells apart."""
    return round(partition * 1000 + offset * 0.001, 6)


def llm_call(partition: int, offset: int, when: datetime) -> dict:
    """An llm_call record whose fields are derived from where it sits in Kafka."""
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{partition}/{offset}")),
        "event_time": when,
        "agent_id": f"agent-{partition}",
        "agent_type": "research",
        "tenant_id": f"tenant-{offset % 3}",
        "trace_id": f"trace-{offset}",
        "call_id": f"call-{partition}-{offset}",
        "task_id": f"task-{partition}-{offset}",
        "provider": "anthropic",
        "model": "claude-3-haiku",
        "api_key_alias": "team-a",
        "input_tokens": 100 + offset,
        "output_tokens": 10,
        "cost_usd": cost(partition, offset),
        "price_version": "2026-11-01",
        "latency_ms": 12.5,
        "status": "ok",
        "cache_hit": False,
    }


def task_event(partition: int, offset: int, when: datetime) -> dict:
    """A task_event record for the task of the llm_call at the same ``partition``/``offset``."""
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"task/{partition}/{offset}")),
        "event_time": when,
        "agent_id": f"agent-{partition}",
        "agent_type": "research",
        "tenant_id": f"tenant-{offset % 3}",
        "trace_id": f"trace-{offset}",
        "task_id": f"task-{partition}-{offset}",
        "status": "failed" if offset % 3 == 0 else "completed",
        "queue": "normal",
        "attempt": 1,
        "cost_usd": 0.0,
        "price_version": "2026-11-01",
    }


#: event -> (topic, record builder)
EVENTS = {"llm_call": (TOPIC, llm_call), "task_event": ("agent.tasks", task_event)}


def batch(
    offsets: dict[int, range],
    *,
    event: str = "llm_call",
    dlq: dict[int, range] | None = None,
) -> SinkBatch:
    """A batch of ``event`` records: ``offsets`` per partition, decoded in one call per partition.

    ``dlq`` offsets stand for messages that went to the DLQ: covered by the ranges, not in the
    rows. Event times alternate between 23:00 on one UTC date and 00:00 on the next.
    """
    codec = default_codec()
    topic, record = EVENTS[event]
    tables, ranges = [], []
    for partition, wanted in offsets.items():
        dead = set(dlq.get(partition, ())) if dlq else set()
        kept = [o for o in wanted if o not in dead]
        messages = [encode(event, record(partition, o, DAY + timedelta(hours=o % 2))) for o in kept]
        decoded = codec.decode_batch_arrow(messages, event)
        assert not decoded.failures, decoded.failures
        rows = decoded.table.append_column(PARTITION_COLUMN, pa.array([partition] * len(kept), pa.int32()))
        tables.append(rows.append_column(OFFSET_COLUMN, pa.array(kept, pa.int64())))
        everything = sorted(set(wanted) | dead)
        ranges.append(OffsetRange(topic, partition, everything[0], everything[-1]))
    return SinkBatch(TABLES[topic], event, pa.concat_tables(tables), tuple(ranges))


def main(group: str, partition: int, commits: int, rows: int, start_at: float) -> None:
    sink = LakeSink(load_settings(), group)
    sink.setup()
    time.sleep(max(0.0, start_at - time.time()))
    for i in range(commits):
        sink.write(batch({partition: range(i * rows, (i + 1) * rows)}))
    sink.close()


if __name__ == "__main__":
    group_arg, partition_arg, commits_arg, rows_arg, start_arg = sys.argv[1:]
    main(group_arg, int(partition_arg), int(commits_arg), int(rows_arg), float(start_arg))
