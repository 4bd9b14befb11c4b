"""Read what a topic holds, exactly: every message from offset 0 up to the end offsets the broker
reports when the read starts.

Tests check what reached the broker, not how a consumer group gets there: the reader assigns
every partition itself at offset 0, so no group join, committed-offset lookup or offset reset can
delay a partition (a subscribed test consumer on a loaded CI broker once sat on a partition's
first fetch for over a minute). A group's own behaviour is tested where it is the subject.
"""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from connectors.kafka.config import client_config
from connectors.settings import Settings
from tests.conftest import wait_for


def end_offsets(settings: Settings, topics: list[str]) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of ``topics``: how many messages each holds
    (from offset 0; test topics are never truncated by retention)."""
    consumer = Consumer(client_config(settings, **{"group.id": f"probe.{uuid.uuid4().hex}"}))
    try:
        return _ends(consumer, topics)
    finally:
        consumer.close()


def committed_offsets(settings: Settings, group: str, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The offsets ``group`` committed for ``partitions`` (-1001: none)."""
    consumer = Consumer(client_config(settings, **{"group.id": group, "enable.auto.commit": False}))
    try:
        return {(tp.topic, tp.partition): tp.offset
                for tp in consumer.committed([TopicPartition(*tp) for tp in partitions], timeout=30)}
    finally:
        consumer.close()


def read_topics(settings: Settings, topics: list[str], timeout_s: float = 60, **config: Any) -> list[Any]:
    """Every message of ``topics``, from offset 0 to the end offsets at the start of the read, in
    partition order; fails naming the partitions it could not finish within ``timeout_s``.

    ``config`` adds consumer settings (``isolation.level``…); no offsets are ever committed.
    """
    consumer = Consumer(client_config(settings, **{
        "group.id": f"probe.{uuid.uuid4().hex}", "enable.auto.commit": False, **config,
    }))
    try:
        ends = _ends(consumer, topics)
        got: dict[tuple[str, int], list[Any]] = {tp: [] for tp in ends}
        position = {tp: 0 for tp in ends}
        consumer.assign([TopicPartition(t, p, 0) for (t, p), end in ends.items() if end > 0])

        def done() -> bool:
            for msg in consumer.consume(1_000, timeout=0.5):
                assert msg.error() is None, msg.error()
                tp = (msg.topic(), msg.partition())
                if msg.offset() < ends[tp]:
                    got[tp].append(msg)
                position[tp] = max(position[tp], msg.offset() + 1)
            # A read_committed read skips transaction markers: the position says it is past them.
            for tp in consumer.position([TopicPartition(t, p) for (t, p), end in ends.items() if end > 0]):
                position[(tp.topic, tp.partition)] = max(position[(tp.topic, tp.partition)], tp.offset)
            return all(position[tp] >= end for tp, end in ends.items())

        try:
            wait_for(done, timeout_s, f"the end of {', '.join(topics)}", interval_s=0)
        except AssertionError as exc:
            behind = {f"{t}[{p}]": f"{position[(t, p)]}/{end}" for (t, p), end in ends.items() if position[(t, p)] < end}
            raise AssertionError(f"{exc}; partitions not read to their end (position/end): {behind}") from None
        return [m for tp in sorted(got) for m in got[tp]]
    finally:
        consumer.close()


def _ends(consumer: Any, topics: list[str]) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        for p in partitions:
            ends[(topic, p)] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
    return ends
