"""Dead letters: what could not be processed goes to ``<topic>.dlq`` with its full context.

A dead letter carries the original key, value and headers, plus headers that name the error and
where the message came from. ``ezstream dlq list | show | replay`` reads them back; replay sends
the original bytes to the source topic again, once: a consumer group remembers what was replayed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from connectors.kafka.config import client_config
from connectors.kafka.producer import PRODUCER_DEFAULTS, DeliveryError
from connectors.kafka.topics import DLQ_SUFFIX, dlq_topic
from connectors.settings import Settings

PREFIX = "ez.dlq."
ERROR_CLASS = PREFIX + "error.class"
ERROR_MESSAGE = PREFIX + "error.message"
SOURCE_TOPIC = PREFIX + "source.topic"
SOURCE_PARTITION = PREFIX + "source.partition"
SOURCE_OFFSET = PREFIX + "source.offset"
SOURCE_TIMESTAMP = PREFIX + "source.timestamp"
DEAD_AT = PREFIX + "time"
PROCESSOR = PREFIX + "processor"
REPLAYED_FROM = PREFIX + "replayed.from"

#: Longest error message kept in a header; the rest is cut (bad input can be huge).
MAX_MESSAGE = 2000


class DeadLetters:
    """Produces dead letters for a processor (``lake``, ``alerts``, …).

    Idempotent producer, ``acks=all``; :meth:`flush` returns only when every dead letter is
    durable, so the caller may then record the source offsets as processed.
    """

    def __init__(self, settings: Settings, processor: str) -> None:
        from confluent_kafka import Producer

        self.processor = processor
        self._producer = Producer(client_config(settings, **PRODUCER_DEFAULTS))
        self._failed: list[str] = []
        #: Dead letters sent, per DLQ topic.
        self.sent: Counter[str] = Counter()

    def send(self, message: Any, error_class: str, error_message: str) -> None:
        """Dead-letter ``message`` (a confluent-kafka Message) with the error that stopped it."""
        timestamp_type, timestamp = message.timestamp()
        headers = list(message.headers() or [])
        headers += [
            (ERROR_CLASS, error_class.encode()),
            (ERROR_MESSAGE, error_message[:MAX_MESSAGE].encode(errors="replace")),
            (SOURCE_TOPIC, message.topic().encode()),
            (SOURCE_PARTITION, str(message.partition()).encode()),
            (SOURCE_OFFSET, str(message.offset()).encode()),
            (SOURCE_TIMESTAMP, str(timestamp if timestamp_type else -1).encode()),
            (DEAD_AT, str(int(time.time() * 1000)).encode()),
            (PROCESSOR, self.processor.encode()),
        ]
        topic = dlq_topic(message.topic())
        while True:
            try:
                self._producer.produce(topic, value=message.value(), key=message.key(), headers=headers,
                                       on_delivery=self._delivered)
                break
            except BufferError:
                self._producer.poll(0.05)
        self.sent[topic] += 1

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every dead letter is acknowledged; raises DeliveryError otherwise."""
        remaining = self._producer.flush(timeout_s)
        if remaining or self._failed:
            errors, self._failed = self._failed, []
            raise DeliveryError(
                f"{remaining} dead letter(s) unacknowledged, {len(errors)} failed: {'; '.join(errors[:3])}"
            )

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failed.append(f"{msg.topic()}: {err.str()}")


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as read back from a DLQ topic."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    original_headers: list[tuple[str, bytes]]

    @property
    def source(self) -> str:
        """``topic[partition]@offset`` of the message that failed."""
        h = self.headers
        return f"{h.get(SOURCE_TOPIC, '?')}[{h.get(SOURCE_PARTITION, '?')}]@{h.get(SOURCE_OFFSET, '?')}"


def read_dead_letters(settings: Settings, topic: str, *, limit: int | None = None,
                      timeout_s: float = 10.0) -> list[DeadLetter]:
    """Every dead letter currently in ``topic`` (a ``.dlq`` topic), oldest first per partition."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(client_config(settings, **{
        "group.id": "ezstream.dlq-reader", "enable.auto.commit": False, "enable.partition.eof": True,
    }))
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        ends = {}
        assignment = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, low))
        letters: list[DeadLetter] = []
        if not assignment:
            return letters
        consumer.assign(assignment)
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        done.add(msg.partition())
                        continue
                    raise DeliveryError(f"reading {topic}: {msg.error().str()}")
                letters.append(_dead_letter(msg))
                if msg.offset() + 1 >= ends[msg.partition()]:
                    done.add(msg.partition())
                if limit is not None and len(letters) >= limit:
                    return letters
        return letters
    finally:
        consumer.close()


def _dead_letter(msg: Any) -> DeadLetter:
    ours, original = {}, []
    for name, value in msg.headers() or []:
        if name.startswith(PREFIX):
            ours[name] = (value or b"").decode(errors="replace")
        else:
            original.append((name, value))
    return DeadLetter(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), ours, original)


def dlq_topics(settings: Settings, timeout_s: float = 10.0) -> list[str]:
    """The ``.dlq`` topics on the broker that belong to this deployment (``EZ_TOPIC_PREFIX``)."""
    from confluent_kafka.admin import AdminClient

    topics = AdminClient(client_config(settings)).list_topics(timeout=timeout_s).topics
    return sorted(t for t in topics if t.endswith(DLQ_SUFFIX) and t.startswith(settings.topic_prefix))


def replay(settings: Settings, topic: str, *, timeout_s: float = 30.0) -> int:
    """Send the dead letters of ``topic`` not replayed before back to their source topics.

    A consumer group per DLQ topic remembers how far replay went, so running it twice sends
    nothing twice. Returns how many were sent.
    """
    from confluent_kafka import Consumer, Producer, TopicPartition

    group = f"{settings.topic_prefix}ezstream.dlq-replay"
    consumer = Consumer(client_config(settings, **{
        "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
    }))
    producer = Producer(client_config(settings, **PRODUCER_DEFAULTS))
    sent = 0
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=timeout_s)}
        todo = []
        for tp in tps:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            start = committed[tp.partition] if committed[tp.partition] >= 0 else low
            if high > start:
                todo.append((TopicPartition(topic, tp.partition, start), high))
        if not todo:
            return 0
        ends = {tp.partition: high for tp, high in todo}
        consumer.assign([tp for tp, _ in todo])
        progress: dict[int, int] = {}
        deadline = time.monotonic() + timeout_s
        while any(progress.get(p, -1) + 1 < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise DeliveryError(f"replaying {topic}: timed out after {sent} message(s)")
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    raise DeliveryError(f"reading {topic}: {msg.error().str()}")
                if msg.offset() >= ends[msg.partition()]:
                    continue
                letter = _dead_letter(msg)
                source = letter.headers.get(SOURCE_TOPIC) or topic.removesuffix(DLQ_SUFFIX)
                headers = letter.original_headers + [
                    (REPLAYED_FROM, f"{topic}[{msg.partition()}]@{msg.offset()}".encode())
                ]
                producer.produce(source, value=letter.value, key=letter.key, headers=headers)
                producer.poll(0)
                progress[msg.partition()] = msg.offset()
                sent += 1
        if producer.flush(timeout_s):
            raise DeliveryError(f"replaying {topic}: the source topic did not acknowledge every message")
        # Remember how far replay got only once the replayed messages are durable.
        consumer.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in progress.items()],
                        asynchronous=False)
        return sent
    finally:
        consumer.close()
