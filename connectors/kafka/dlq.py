"""Dead letters: what could not be processed goes to ``<topic>.dlq`` with its full context.

A dead letter carries the original key, value and headers, plus headers that name the error and
where the message came from. ``ezstream dlq list | show | replay`` reads them back.

Exactly once per source message (its topic, partition and offset): :class:`DeadLetters` writes a
source once per process, and keeps every letter until the broker acknowledged it; a restarted
worker may write a letter again (it re-reads what it had not committed), so :func:`replay` skips
every letter whose source was replayed, or appears earlier in the DLQ, and commits its progress
with the replayed messages in one Kafka transaction.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from connectors.errors import TerminalError
from connectors.failpoints import failpoint
from connectors.kafka.config import client_config, producer_config
from connectors.kafka.producer import PRODUCER_DEFAULTS, DeliveryError
from connectors.kafka.topics import DLQ_MAX_MESSAGE_BYTES, DLQ_SUFFIX, dlq_topic
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
#: Deliveries of one letter that may fail with an error that could pass (a timeout, a broker
#: away) before the letter counts as refused for good. Each lasts up to ``message.timeout.ms``
#: (librdkafka's default: 5 minutes), so the default bears a broker outage of about half an hour.
MAX_ATTEMPTS = 6
#: Delivered offsets a :class:`DeadLetters` remembers per source partition to drop a second send
#: of the same source; past it the lowest half is forgotten.
REMEMBERED_PER_PARTITION = 10_000
#: Letters per replay transaction.
REPLAY_CHUNK = 1000

#: ``(topic, partition, offset)`` of the message a dead letter stands for.
Source = tuple[str, int, int]


def _format(source: Source) -> str:
    return f"{source[0]}[{source[1]}]@{source[2]}"


class DeadLetterRefused(TerminalError):
    """Dead letters the DLQ refused for good; their source partitions must not move past them.

    :attr:`sources` lists the ``(topic, partition, offset)`` of each, :attr:`errors` the broker's
    reason per source. The letters stay pending in their :class:`DeadLetters` until delivered or
    discarded.
    """

    def __init__(self, errors: dict[Source, str]) -> None:
        self.errors = dict(sorted(errors.items()))
        self.sources: list[Source] = list(self.errors)
        named = "; ".join(f"{_format(s)}: {e}" for s, e in list(self.errors.items())[:5])
        more = f" and {len(self.errors) - 5} more" if len(self.errors) > 5 else ""
        super().__init__(
            f"{len(self.errors)} dead letter(s) refused for good, so their partitions stop there: {named}{more}. "
            f"A letter too large for its DLQ topic needs a larger max.message.bytes there (`ezstream topics create` "
            f"raises it to {DLQ_MAX_MESSAGE_BYTES}); a missing or forbidden DLQ topic needs creating or an ACL"
        )


@functools.cache
def _refused_codes() -> tuple[frozenset[int], frozenset[int]]:
    """librdkafka error codes no retry can pass: (every such code, those about the size)."""
    from confluent_kafka import KafkaError as E

    size = frozenset({E.MSG_SIZE_TOO_LARGE, E.RECORD_LIST_TOO_LARGE})
    return size | {
        E.INVALID_RECORD, E.UNSUPPORTED_FOR_MESSAGE_FORMAT, E.INVALID_REQUIRED_ACKS,
        E.TOPIC_AUTHORIZATION_FAILED, E.CLUSTER_AUTHORIZATION_FAILED, E.POLICY_VIOLATION,
        E.UNKNOWN_TOPIC_OR_PART, E._UNKNOWN_TOPIC, E._UNKNOWN_PARTITION, E.TOPIC_EXCEPTION, E._INVALID_ARG,
    }, size


@dataclass(eq=False)
class _Letter:
    """A dead letter not yet acknowledged: in flight, or failed with ``error``."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    attempts: int = 0
    in_flight: bool = False
    error: Any = None  # the KafkaError of the last attempt
    #: The last attempt went with nothing else in flight: a size refusal is this letter's own,
    #: not that of a record batch it shared.
    alone: bool = False


class DeadLetters:
    """Produces dead letters for a processor (``lake``, ``alerts``, …).

    Idempotent producer, ``acks=all``. :meth:`send` queues a letter and never raises for one
    letter; :meth:`flush` returns only when every letter is durable, so the caller may then
    record the source offsets as processed. A letter is kept until acknowledged or
    :meth:`discard`-ed: raising never forgets one.

    Per-process dedup: a second :meth:`send` of a source that is pending or was delivered is a
    no-op. Delivered sources are remembered per source partition, at most ``remember`` offsets
    each (the lowest half is forgotten past it), and :meth:`forget_below` drops those the caller
    committed. A restarted process does not know what it wrote; :func:`replay` drops those repeats.

    :param max_attempts: failed deliveries (timeouts, broker away) before a letter is refused.
    :param overrides: librdkafka properties that win over the defaults and ``EZ_KAFKA_EXTRA``.
    """

    def __init__(self, settings: Settings, processor: str, *, max_attempts: int = MAX_ATTEMPTS,
                 remember: int = REMEMBERED_PER_PARTITION, **overrides: Any) -> None:
        from confluent_kafka import Producer

        self.processor = processor
        self.max_attempts = max_attempts
        self._remember = remember
        self._config = producer_config(settings, **{
            **PRODUCER_DEFAULTS, "message.max.bytes": DLQ_MAX_MESSAGE_BYTES, **overrides})
        self._producer = Producer(self._config)
        self._pending: dict[Source, _Letter] = {}
        self._delivered: dict[tuple[str, int], set[int]] = {}
        #: Dead letters sent, per DLQ topic (a repeated source is not counted).
        self.sent: Counter[str] = Counter()

    @property
    def pending(self) -> list[Source]:
        """Sources whose letter is not acknowledged yet (in flight or failed)."""
        return list(self._pending)

    def send(self, message: Any, error_class: str, error_message: str) -> bool:
        """Dead-letter ``message`` (a confluent-kafka Message) with the error that stopped it.

        Returns False, sending nothing, when this source is pending or was delivered already. A
        letter the producer refuses at once (too large, say) is kept as failed: :meth:`flush`
        reports it.
        """
        source = (message.topic(), message.partition(), message.offset())
        if source in self._pending or source[2] in self._delivered.get(source[:2], ()):
            return False
        timestamp_type, timestamp = message.timestamp()
        headers = list(message.headers() or [])
        headers += [
            (ERROR_CLASS, error_class.encode()),
            (ERROR_MESSAGE, error_message[:MAX_MESSAGE].encode(errors="replace")),
            (SOURCE_TOPIC, source[0].encode()),
            (SOURCE_PARTITION, str(source[1]).encode()),
            (SOURCE_OFFSET, str(source[2]).encode()),
            (SOURCE_TIMESTAMP, str(timestamp if timestamp_type else -1).encode()),
            (DEAD_AT, str(int(time.time() * 1000)).encode()),
            (PROCESSOR, self.processor.encode()),
        ]
        letter = _Letter(dlq_topic(source[0]), message.key(), message.value(), headers)
        self._pending[source] = letter
        self.sent[letter.topic] += 1
        self._produce(source, letter)
        self._producer.poll(0)
        return True

    def flush(self, timeout_s: float = 30.0) -> None:
        """Re-send the letters that failed and could pass, then wait until every letter is
        acknowledged.

        :raises DeadLetterRefused: some letters were refused for good (too large for the DLQ
            topic, the topic missing or forbidden, or ``max_attempts`` failed deliveries). They
            stay pending: every later flush raises again until the caller discards them.
        :raises DeliveryError: (a TransientError) letters are unacknowledged after ``timeout_s``
            or failed with an error that may pass; call flush again, after a back-off.
        """
        from confluent_kafka import KafkaError

        deadline = time.monotonic() + timeout_s
        if any(l.error is not None and l.error.code() == KafkaError._FATAL for l in self._pending.values()):
            self._renew_producer()
        for source, letter in list(self._pending.items()):
            if (not letter.in_flight and letter.error is not None and not self._refused(letter)
                    and not self._needs_alone(letter)):
                self._produce(source, letter)
        remaining = self._producer.flush(timeout_s)
        # A record batch over the topic's limit fails every letter in it: each such letter gets
        # one try alone, so only the letters really too large are refused.
        for source, letter in list(self._pending.items()):
            if remaining or time.monotonic() > deadline:
                break
            if not letter.in_flight and self._needs_alone(letter):
                self._produce(source, letter, alone=True)
                remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        refused = {s: f"to {l.topic}, {len(l.value or b'')} bytes, {l.attempts} attempt(s): {l.error.name()}: "
                      f"{l.error.str()}"
                   for s, l in self._pending.items() if not l.in_flight and self._refused(l)}
        if refused:
            raise DeadLetterRefused(refused)
        if self._pending:
            failed = [f"{_format(s)}: {l.error.str()}" for s, l in self._pending.items() if l.error is not None]
            raise DeliveryError(
                f"{len(self._pending)} dead letter(s) of {self.processor} not acknowledged yet "
                f"({remaining} in flight after {timeout_s:.0f} s, {len(failed)} failed and sent again at the "
                f"next flush){': ' if failed else ''}{'; '.join(failed[:3])}"
            )

    def discard(self, topic: str, partition: int) -> list[Source]:
        """Drop the pending letters of source partition ``topic[partition]``, for a partition the
        caller halts or lost; returns their sources. One already in flight may still arrive."""
        dropped = [s for s in self._pending if s[:2] == (topic, partition)]
        for source in dropped:
            del self._pending[source]
        return dropped

    def forget_below(self, topic: str, partition: int, offset: int) -> None:
        """Forget the delivered sources of ``topic[partition]`` below ``offset`` (committed: this
        process will not read them again)."""
        delivered = self._delivered.get((topic, partition))
        if delivered:
            delivered.difference_update([o for o in delivered if o < offset])

    def close(self) -> None:
        """Release the producer (a live one reconnects to an absent broker for ever). Letters not
        acknowledged are given up, so call it after :meth:`flush` succeeded or when the process
        stops: a restart reads their sources again. The object must not be used afterwards."""
        self._producer.purge()
        self._producer.flush(0)
        self._producer.close()
        self._pending.clear()

    def _needs_alone(self, letter: _Letter) -> bool:
        return letter.error is not None and letter.error.code() in _refused_codes()[1] and not letter.alone

    def _refused(self, letter: _Letter) -> bool:
        refused, size = _refused_codes()
        code = letter.error.code()
        if code in refused:
            return code not in size or letter.alone
        return letter.attempts >= self.max_attempts

    def _produce(self, source: Source, letter: _Letter, *, alone: bool = False) -> None:
        from confluent_kafka import KafkaException

        letter.attempts += 1
        letter.error, letter.in_flight, letter.alone = None, True, alone
        report = functools.partial(self._delivered_cb, source, letter, letter.attempts)
        while True:
            try:
                self._producer.produce(letter.topic, value=letter.value, key=letter.key, headers=letter.headers,
                                       on_delivery=report)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                # Refused before it left (too large for the producer): no batch shared this.
                letter.error, letter.in_flight, letter.alone = exc.args[0], False, True
                return

    def _delivered_cb(self, source: Source, letter: _Letter, attempt: int, err: Any, msg: Any) -> None:
        current = self._pending.get(source) is letter
        if err is not None:
            if current and letter.attempts == attempt:  # not the report of an attempt given up on
                letter.error, letter.in_flight = err, False
            return
        if current:
            del self._pending[source]
        delivered = self._delivered.setdefault(source[:2], set())
        delivered.add(source[2])
        if len(delivered) > self._remember:
            keep = sorted(delivered)[len(delivered) - self._remember // 2:]
            delivered.clear()
            delivered.update(keep)

    def _renew_producer(self) -> None:
        # A fatal error (the idempotent producer lost its sequence) ends a producer for good; the
        # letters are ours, so a new producer sends them again.
        from confluent_kafka import Producer

        self._producer.flush(0)
        self._producer = Producer(self._config)
        for source, letter in list(self._pending.items()):
            if letter.error is None or not self._refused(letter):
                self._produce(source, letter)


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

    @property
    def source_key(self) -> Source | tuple[str, int, int, str]:
        """What identifies the source message, to find repeats: its ``(topic, partition, offset)``;
        a letter without those headers is its own (its DLQ coordinates)."""
        h = self.headers
        try:
            return h[SOURCE_TOPIC], int(h[SOURCE_PARTITION]), int(h[SOURCE_OFFSET])
        except (KeyError, ValueError):
            return self.dlq_topic, self.dlq_partition, self.dlq_offset, "dlq"


def _scan(consumer: Any, topic: str, ranges: dict[int, tuple[int, int]], timeout_s: float) -> Iterator[Any]:
    """The messages of ``topic`` in ``{partition: (start, end)}``, oldest first per partition.

    :raises DeliveryError: nothing arrived for ``timeout_s``, or reading failed.
    """
    from confluent_kafka import KafkaError, TopicPartition

    ranges = {p: r for p, r in ranges.items() if r[1] > r[0]}
    if not ranges:
        return
    consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in ranges.items()])
    done: set[int] = set()
    deadline = time.monotonic() + timeout_s

    def finish(partition: int) -> None:
        done.add(partition)
        consumer.pause([TopicPartition(topic, partition)])

    try:
        while len(done) < len(ranges):
            if time.monotonic() > deadline:
                raise DeliveryError(f"reading {topic}: nothing arrived for {timeout_s:.0f} s "
                                    f"({len(ranges) - len(done)} partition(s) not read to their end)")
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        if msg.partition() in ranges and msg.partition() not in done:
                            finish(msg.partition())
                        continue
                    raise DeliveryError(f"reading {topic}: {msg.error().str()}")
                partition = msg.partition()
                if partition in done:
                    continue
                end = ranges[partition][1]
                if msg.offset() >= end:
                    finish(partition)
                    continue
                deadline = time.monotonic() + timeout_s
                yield msg
                if msg.offset() + 1 >= end:
                    finish(partition)
    finally:
        # A pause outlives the assignment in librdkafka: the next scan of this consumer would wait.
        consumer.resume([TopicPartition(topic, p) for p in done])
        consumer.unassign()


def _ranges(consumer: Any, topic: str, timeout_s: float) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` watermarks of ``topic``."""
    from confluent_kafka import KafkaException, TopicPartition

    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        if metadata.error is not None:
            raise DeliveryError(f"{topic}: {metadata.error.str()}")
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                for p in metadata.partitions}
    except KafkaException as exc:
        raise DeliveryError(f"reading {topic}: {exc.args[0].str()}") from None


def read_dead_letters(settings: Settings, topic: str, *, limit: int | None = None,
                      timeout_s: float = 10.0) -> list[DeadLetter]:
    """Every dead letter currently in ``topic`` (a ``.dlq`` topic), oldest first per partition."""
    from confluent_kafka import Consumer

    consumer = Consumer(client_config(settings, **{
        "group.id": "ezstream.dlq-reader", "enable.auto.commit": False, "enable.partition.eof": True,
    }))
    letters: list[DeadLetter] = []
    try:
        for msg in _scan(consumer, topic, _ranges(consumer, topic, timeout_s), timeout_s):
            letters.append(_dead_letter(msg))
            if limit is not None and len(letters) >= limit:
                break
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


@dataclass(frozen=True)
class Replayed:
    """What one :func:`replay` did."""

    #: Letters sent back to their source topic.
    sent: int
    #: Letters skipped: their source was replayed already, or has an earlier letter.
    duplicates: int


def replay_transactional_id(settings: Settings, topic: str) -> str:
    """The transactional.id of the replay of DLQ ``topic``: one per (prefix, topic), so a second
    replay of the same topic fences the first."""
    return f"{settings.topic_prefix}ezstream.dlq-replay.{topic}"


def replay(settings: Settings, topic: str, *, chunk: int = REPLAY_CHUNK, timeout_s: float = 30.0) -> Replayed:
    """Send the dead letters of ``topic`` back to their source topics, each source message once.

    Consume-transform-produce: per ``chunk`` letters, one Kafka transaction holds the replayed
    messages and the position of the replay group (``<prefix>ezstream.dlq-replay``) in ``topic``,
    so a replay killed or failed midway replays nothing twice when run again. Letters whose
    source ``(topic, partition, offset)`` was replayed already (a letter before the committed
    position) or came earlier in this run are skipped: a restarted worker may have written one
    source twice.

    Cost: every run reads ``topic`` from its beginning (its letters before the committed position
    once, to know what was replayed) and holds one set entry per distinct source in memory.

    :raises DeliveryError: the broker did not answer, or a transaction failed; what this run did
        not commit is replayed by the next run.
    """
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    group = f"{settings.topic_prefix}ezstream.dlq-replay"
    consumer = Consumer(client_config(settings, **{
        "group.id": group, "enable.auto.commit": False, "enable.partition.eof": True,
        "isolation.level": "read_committed",
    }))
    producer = Producer(producer_config(settings, **{
        **PRODUCER_DEFAULTS, "message.max.bytes": DLQ_MAX_MESSAGE_BYTES,
        "transactional.id": replay_transactional_id(settings, topic),
    }))
    sent = duplicates = 0
    open_chunk = False
    try:
        # First: an unfinished transaction of an earlier replay is aborted, its producer fenced,
        # before the committed position is read.
        producer.init_transactions(timeout_s)
        ranges = _ranges(consumer, topic, timeout_s)
        tps = [TopicPartition(topic, p) for p in ranges]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=timeout_s)}
        start = {p: max(low, committed[p]) if committed[p] >= 0 else low for p, (low, _) in ranges.items()}
        seen = {_dead_letter(msg).source_key
                for msg in _scan(consumer, topic, {p: (low, start[p]) for p, (low, _) in ranges.items()}, timeout_s)}
        position: dict[int, int] = {}
        in_chunk = 0

        def commit() -> None:
            failpoint("dlq.replay.before_commit")
            producer.send_offsets_to_transaction([TopicPartition(topic, p, o) for p, o in position.items()],
                                                 consumer.consumer_group_metadata(), timeout_s)
            producer.commit_transaction(timeout_s)
            failpoint("dlq.replay.after_chunk")

        for msg in _scan(consumer, topic, {p: (start[p], high) for p, (_, high) in ranges.items()}, timeout_s):
            if not open_chunk:
                producer.begin_transaction()
                open_chunk = True
            letter = _dead_letter(msg)
            if letter.source_key in seen:
                duplicates += 1
            else:
                seen.add(letter.source_key)
                source = letter.headers.get(SOURCE_TOPIC) or topic.removesuffix(DLQ_SUFFIX)
                headers = letter.original_headers + [
                    (REPLAYED_FROM, f"{topic}[{msg.partition()}]@{msg.offset()}".encode())
                ]
                while True:
                    try:
                        producer.produce(source, value=letter.value, key=letter.key, headers=headers)
                        break
                    except BufferError:
                        producer.poll(0.05)
                producer.poll(0)
                sent += 1
            position[msg.partition()] = msg.offset() + 1
            in_chunk += 1
            if in_chunk >= chunk:
                commit()
                open_chunk, in_chunk = False, 0
        if open_chunk:
            commit()
            open_chunk = False
        return Replayed(sent, duplicates)
    except KafkaException as exc:
        if open_chunk:
            try:
                producer.abort_transaction(timeout_s)
            except KafkaException:
                pass  # the next replay's init_transactions aborts it
        raise DeliveryError(f"replaying {topic}: {exc.args[0].str()}; what this run did not commit "
                            f"is replayed by the next run") from None
    finally:
        consumer.close()
