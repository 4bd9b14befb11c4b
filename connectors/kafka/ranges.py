"""Read exactly given offset ranges of Kafka partitions again, whoever owns them in a group.

The sink loop rebuilds a batch its sink recorded but may not have finished writing (see
:class:`~connectors.sink.ResumePoint`): every range of it, other members' partitions included. A
consumer of its own, assigned and never subscribed, reads them; it joins no group and commits
nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from connectors.failpoints import failpoint
from connectors.kafka.config import client_config
from connectors.settings import Settings
from connectors.sink import OffsetRange

log = logging.getLogger(__name__)


def read_ranges(
    settings: Settings,
    ranges: tuple[OffsetRange, ...],
    *,
    group: str,
    stop: threading.Event,
    who: str,
    fetch_messages: int = 10_000,
) -> dict[tuple[str, int], list[Any]] | None:
    """The messages of exactly ``ranges``, in offset order per (topic, partition).

    A range whose offsets the topic no longer holds (retention, a truncated log) is read as far
    as it holds them, with a warning. Returns None, leaving the rest unread, once ``stop`` is set.

    :param group: the ``group.id`` the reader is named by (it never joins the group).
    :param who: the role reading, for log lines and the failpoint ``<who>.replay_partial``.
    :raises KafkaException: a fatal consumer error.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    got: dict[tuple[str, int], list[Any]] = {(r.topic, r.partition): [] for r in ranges}
    pending = {(r.topic, r.partition): r for r in ranges}
    reader = Consumer(client_config(settings, **{
        "group.id": group, "enable.auto.commit": False, "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest", "queued.max.messages.kbytes": 32768,
    }))
    try:
        reader.assign([TopicPartition(r.topic, r.partition, r.first) for r in ranges])
        while pending:
            if stop.is_set():
                log.info("%s: leaving the replay of offsets %s to the next start (read up to %s)", who,
                         spans(ranges), ", ".join(f"{t}[{p}]@{m[-1].offset() if m else '-'}" for (t, p), m in got.items()))
                return None
            messages = reader.consume(fetch_messages, timeout=0.5)
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("%s: replay consumer error: %s", who, err.str())
                    continue
                key = (msg.topic(), msg.partition())
                rng = pending.get(key)
                if rng is None:
                    continue
                if msg.offset() <= rng.last:
                    got[key].append(msg)
                if msg.offset() >= rng.last:
                    del pending[key]
            if pending and any(got.values()) and failpoint(f"{who}.replay_partial"):
                stop.set()
            if not messages:
                for key, rng in list(pending.items()):
                    # A log truncated below the range's last offset never reaches it again.
                    if reader.get_watermark_offsets(TopicPartition(*key), timeout=10)[1] <= rng.last:
                        del pending[key]
        for rng in ranges:
            held = got[(rng.topic, rng.partition)]
            if not held or held[-1].offset() != rng.last:
                log.warning("%s: %s[%d]: the topic no longer holds all of the recorded offsets %d..%d "
                            "(retention, truncation): read as far as it holds them",
                            who, rng.topic, rng.partition, rng.first, rng.last)
        return got
    finally:
        reader.close()


def spans(ranges: tuple[OffsetRange, ...]) -> str:
    """``topic[0@10..19,1@5..9]``: ranges of one topic in one short phrase."""
    return f"{ranges[0].topic}[{','.join(f'{r.partition}@{r.first}..{r.last}' for r in ranges)}]"
