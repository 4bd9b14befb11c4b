"""The one batching and commit loop shared by every sink.

A batch consumer (librdkafka, thousands of messages per call) keeps one buffer per (topic,
partition). When a buffer is big or old enough, the buffers of each topic are decoded in one call
into Arrow by the native decoder (:mod:`connectors.kafka.native`, built at start;
fastavro stays the reference its tests compare it with), undecodable messages go to the DLQ
(durably, first), and the sink writes the rest: one write per table, holding one offset range
per partition. The sink records how far it got; on assignment the loop seeks to the sink's
record, never to the group's committed offsets (committed only for lag monitoring).

Every decoded batch is checked against the value rules of :mod:`connectors.validation` before
any write: a value the schema admits but a store cannot hold sends its message to the DLQ, in every
sink alike, so the stores hold the same rows.

While a sink is unavailable the loop keeps the batch, pauses its partitions (so memory stays
bounded), and retries with back-off. In-flight work belongs to an assignment: each assignment
of a partition starts a new epoch, and a batch built in an earlier epoch is never written for
it (Kafka Connect's open/close per partition), even if the partition came back to this worker
meanwhile: the new buffer rebuilds it from the sink's record. The exception is a batch the sink
already recorded (:meth:`~connectors.sink.Sink.recorded`): it is written whole, as recorded,
since whoever holds one of its partitions may replay it and must write the same. The offsets a
batch records are checked against the messages it holds.

A recorded batch that a resume point names (:class:`~connectors.sink.ResumePoint`) is read again,
every range of it, other partitions' included, by a consumer of its own that reads exactly those
offsets, then written whole before anything else of its partitions is; a stop halfway through
the reading leaves it to the next start.

A dead letter the DLQ refuses for good (see :class:`~connectors.kafka.dlq.DeadLetterRefused`)
halts its source partition with an error naming it: the partition is paused and nothing past
the letter is recorded, while the other partitions go on.

A loop either consumes for itself (a worker with one sink role) or is a lane of a
:class:`~streams.sinks.feed.SharedFeed`, which consumes once for every sink of a worker and
hands each lane the same messages: the lane then buffers, flushes and writes in its own thread
as above, and asks the feed for what touches the consumer (pausing, committing). Either way a
rebalance is served only between two steps of the loop (a flush, a replay) or while a write
backs off, never during a write.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import chain, groupby
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Message

from connectors.backoff import Backoff
from connectors.errors import TerminalError, TransientError
from connectors.failpoints import failpoint
from streams import metrics
from connectors.kafka.codec import Codec
from connectors.kafka.config import client_config
from connectors.kafka.dlq import DeadLetterRefused, DeadLetters
from connectors.kafka.freetext import FreeTextPolicy
from connectors.kafka.native import NativeCodec
from connectors.kafka.ranges import read_ranges, spans
from connectors.kafka.schemas import TOPIC_EVENTS
from connectors.kafka.topics import topic_name
from connectors.settings import Settings
from connectors.sink import (
    OFFSET_COLUMN,
    PARTITION_COLUMN,
    TABLES,
    OffsetRange,
    ResumePoint,
    Sink,
    SinkBatch,
    batch_token,
)
from connectors.validation import ValueRules, screen

log = logging.getLogger(__name__)


class _Abandoned(Exception):
    """Stop was requested while a write kept failing: leave it for the next start."""


@dataclass(frozen=True)
class FlushPolicy:
    """When buffered messages are written: whichever limit is reached first, or, once the loop
    has caught up (a fetch of its whole assignment waited and brought nothing), as soon as the
    batch is ``quiet_age_s`` old (0: never early), so the end of a burst is not left waiting for
    ``max_age_s``."""

    max_rows: int
    max_bytes: int
    max_age_s: float
    quiet_age_s: float = 0.0

    @classmethod
    def for_sink(cls, settings: Settings, sink: str) -> "FlushPolicy":
        prefix = "lake" if sink == "lake" else "clickhouse"
        return cls(
            max_rows=getattr(settings, f"{prefix}_flush_rows"),
            max_bytes=int(getattr(settings, f"{prefix}_flush_mb") * 1024 * 1024),
            max_age_s=getattr(settings, f"{prefix}_flush_seconds"),
            quiet_age_s=getattr(settings, f"{prefix}_flush_quiet_seconds"),
        )


@dataclass
class _PartitionBuffer:
    """Messages of one partition not yet written, and where the next range starts."""

    next_offset: int  # first offset of the next range (the seek position, or last written + 1)
    epoch: int  # the assignment this buffer belongs to
    waits_for: str | None = None  # token of a recorded batch to write before anything of this buffer
    messages: list[Any] = field(default_factory=list)
    last_offset: int = -1  # of the last message in ``messages``
    nbytes: int = 0
    since: float = 0.0  # monotonic time of the first buffered message


@dataclass
class RunnerStats:
    """Counters of one loop, read by status and metrics."""

    consumed: int = 0
    written_rows: int = 0
    dead_letters: int = 0
    batches: int = 0
    retries: int = 0
    last_write_at: float = 0.0
    #: Seconds spent fetching, decoding (and dead-lettering), and writing: where the time goes.
    poll_s: float = 0.0
    decode_s: float = 0.0
    write_s: float = 0.0
    paused: bool = False
    #: Partitions stopped by a dead letter the DLQ refused: "topic[partition]" -> why.
    halted: dict[str, str] = field(default_factory=dict)


class SinkRunner:
    """Consumes the catalogue topics of ``sink`` and writes them through it until stopped.

    :param topics: catalogue topic names (``agent.tasks``…); ``EZ_TOPIC_PREFIX`` is applied.
    :param dead_letters: whether this loop dead-letters undecodable and invalid messages.
        Exactly one sink should (the lake, the system of record): every sink reads the same
        topics and decides the same, and a second one would dead-letter each bad message again.
        The others skip them the same way. Rows a store refuses for good are dead-lettered by
        the loop of that store, whichever it is.
    """

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        *,
        topics: list[str] | None = None,
        policy: FlushPolicy | None = None,
        dead_letters: bool = False,
        codec: Codec | None = None,
        fetch_messages: int = 10_000,
    ) -> None:
        self.settings = settings
        self.sink = sink
        #: The role this loop plays in a worker (the sink's name).
        self.name = sink.name
        self.policy = policy or FlushPolicy.for_sink(settings, sink.name)
        # The native decoder of ``codec`` (the default codec's by default), built now: a missing or
        # stale extension stops the worker at start with a ConfigError naming ``make native``, never
        # a silent fallback to fastavro. One per loop, not shared: a decoder takes one batch at a
        # time, and the sinks of one process decode in parallel with the GIL released.
        self.decoder = NativeCodec(codec)
        # Other producers than the SDK exist: free text is dropped or cut again before any write.
        self.free_text = FreeTextPolicy.from_settings(settings)
        self.rules = ValueRules.from_settings(settings)
        self.fetch_messages = fetch_messages
        self.group = f"{settings.topic_prefix}ezstream.{sink.name}"
        self._catalogue = {topic_name(settings, t): t for t in (topics or list(TABLES))}
        self._dead_letters_enabled = dead_letters
        self._dlq: DeadLetters | None = None
        self._consumer: Any = None
        self._buffers: dict[tuple[str, int], _PartitionBuffer] = {}
        #: Recorded batches the resume points named, by token: rebuilt and written before the rest.
        self._replays: dict[str, tuple[OffsetRange, ...]] = {}
        self._epoch = 0
        #: Epoch of each partition whose batch is being written (the assignment it was built in).
        self._building: dict[tuple[str, int], int] = {}
        self._halted: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        #: Set once the sink is set up and the consumer subscribed.
        self.ready = threading.Event()
        self.stats = RunnerStats()
        #: The shared consumer this loop is a lane of (:meth:`attach`); None: it consumes itself.
        self._feed: Any = None
        #: Guards the buffers, epochs, replays and halts, which a feed's thread changes too.
        self._lock = threading.RLock()
        #: Held for the whole of a step (a flush, a replay) except while a write backs off: a
        #: rebalance waits for it, so it is never served in the middle of a write.
        self._busy = threading.Lock()
        self._in_step = False
        #: Set by a feed when it handed this lane messages.
        self._wake = threading.Event()
        #: Whether the last fetch waited and brought nothing (caught up): see FlushPolicy.quiet_age_s.
        self._quiet = False
        #: Set once the sink is set up (a feed subscribes only when every lane's is).
        self.set_up = threading.Event()

    def attach(self, feed: Any) -> None:
        """Make this loop a lane of ``feed``, which consumes for it (see :mod:`streams.sinks.feed`)."""
        self._feed = feed

    # -- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish: it writes what it holds if the sink allows, then returns."""
        self._stop.set()
        self._wake.set()

    @contextmanager
    def _step(self) -> Iterator[None]:
        with self._exclusive():
            self._in_step = True
            try:
                yield
            finally:
                self._in_step = False

    def _exclusive(self) -> Any:
        """The step lock of a lane, which a feed's thread shares; a loop of its own serves
        rebalances in its own thread, between steps or while a write backs off: nothing to lock."""
        return self._busy if self._feed is not None else nullcontext()

    def run(self) -> None:
        """Run until :meth:`stop`; raises only on errors that retrying cannot fix."""
        from confluent_kafka import Consumer

        self._retry(self.sink.setup, "setting up")
        self._dlq = DeadLetters(self.settings, self.sink.name)
        self.set_up.set()
        if self._feed is None:
            from streams.sinks.feed import check_layout

            check_layout(self.settings, shared=False)
            self._consumer = Consumer(client_config(self.settings, **consumer_settings(self.group)))
            self._consumer.subscribe(list(self._catalogue), on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_revoke)
            self.ready.set()
        # A short wait: consume() returns early only with a full fetch, so at moderate rates this
        # timeout is how late a due batch is noticed (0.5 s gave p99 2.2 s of freshness at 10,000
        # events/s, 0.1 s gives 1.7 s; an idle loop wakes 10 times a second).
        wait_s = min(0.1, self.policy.max_age_s / 2)
        try:
            while not self._stop.is_set():
                if self._replays:
                    with self._step():
                        self._replay()
                    continue
                if self._feed is None:
                    self._poll(timeout_s=wait_s)
                else:
                    self._wake.wait(wait_s)
                    self._wake.clear()
                if self._due():
                    with self._step():
                        self._flush()
            with self._step():
                self._flush()
            for ranges in self._replays.values():
                log.info("%s: leaving the replay of offsets %s to the next start", self.sink.name, spans(ranges))
        except _Abandoned as exc:
            log.warning("%s: stopped with a batch unwritten (it is read again at restart): %s", self.sink.name, exc)
        finally:
            st = self.stats
            log.info("%s: stopping after %d messages, %d rows in %d writes, %d dead letters, %d retries; "
                     "seconds fetching %.1f, decoding %.1f, writing %.1f", self.sink.name, st.consumed,
                     st.written_rows, st.batches, st.dead_letters, st.retries, st.poll_s, st.decode_s, st.write_s)
            if self._consumer is not None:
                self._consumer.close()
            self._dlq.close()
            self.sink.close()

    # -- consuming -----------------------------------------------------------------------------

    def _poll(self, timeout_s: float) -> None:
        started = time.monotonic()
        messages = self._consumer.consume(self.fetch_messages, timeout=timeout_s)
        if messages:
            self.take(fetched_runs(messages, self.sink.name), time.monotonic())
        elif timeout_s > 0 and not self.stats.paused:
            self.quiet()
        self.stats.poll_s += time.monotonic() - started

    def take(self, runs: list[tuple[tuple[str, int], list[Any], list[int]]], now: float) -> None:
        """Buffer the ``runs`` of a fetch (see :func:`fetched_runs`): what this loop holds of them."""
        per_topic: dict[str, int] = {}
        with self._lock:
            self._quiet = False
            for key, run, offsets in runs:
                per_topic[key[0]] = per_topic.get(key[0], 0) + len(run)
                buffer = self._buffers.get(key)
                if buffer is not None:  # else revoked in this very call: its new owner reads it again
                    self._buffer(buffer, run, offsets, now)
        self.stats.consumed += sum(per_topic.values())
        for topic, count in per_topic.items():
            metrics.EVENTS_IN.labels(self.sink.name, self._catalogue.get(topic, topic)).inc(count)
        self._wake.set()

    def quiet(self) -> None:
        """A fetch of this loop's whole assignment waited and brought nothing: it has caught up."""
        with self._lock:
            self._quiet = True
        self._wake.set()

    def buffered(self) -> tuple[int, int]:
        """Rows and bytes buffered and not yet taken by a flush."""
        with self._lock:
            return (sum(len(b.messages) for b in self._buffers.values()),
                    sum(b.nbytes for b in self._buffers.values()))

    def over_bound(self) -> bool:
        """Whether this loop holds a full batch it has not taken yet: a feed then stops reading for
        it, as a loop of its own does while it writes, so memory stays bounded."""
        rows, nbytes = self.buffered()
        return rows >= self.policy.max_rows or nbytes >= self.policy.max_bytes

    @staticmethod
    def _buffer(buffer: _PartitionBuffer, run: list[Any], offsets: list[int], now: float) -> None:
        """Add a run of one partition's messages to its buffer, leaving out what it holds or wrote
        (delivered again after a seek)."""
        held = buffer.last_offset if buffer.messages else buffer.next_offset - 1
        if offsets[0] <= held or not all(map(operator.lt, offsets, offsets[1:])):
            kept = []
            for msg, offset in zip(run, offsets):
                if offset > held:
                    kept.append(msg)
                    held = offset
            run = kept
            if not run:
                return
        if not buffer.messages:
            buffer.since = now
        buffer.messages.extend(run)
        buffer.last_offset = run[-1].offset()
        buffer.nbytes += sum(map(len, run))  # len() of a message is its value's

    def _due(self) -> bool:
        rows = nbytes = 0
        oldest = None
        with self._lock:
            for buffer in self._buffers.values():
                if not buffer.messages or buffer.waits_for is not None:
                    continue
                rows += len(buffer.messages)
                nbytes += buffer.nbytes
                oldest = buffer.since if oldest is None else min(oldest, buffer.since)
            quiet = self._quiet
        if oldest is None:
            return False
        age = time.monotonic() - oldest
        policy = self.policy
        return (rows >= policy.max_rows or nbytes >= policy.max_bytes or age >= policy.max_age_s
                or (quiet and 0 < policy.quiet_age_s <= age))

    # -- writing -------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Decode, check, dead-letter and write everything buffered; returns when it is durable."""
        flush_started = time.monotonic()
        batch_bytes = 0
        batches: dict[str, list[tuple[OffsetRange, list[Any]]]] = {}
        with self._lock:
            self._building = {}
            for (topic, partition), buffer in self._buffers.items():
                if not buffer.messages or buffer.waits_for is not None:
                    continue
                taken, buffer.messages = buffer.messages, []
                last = taken[-1].offset()
                rng = OffsetRange(topic, partition, buffer.next_offset, last)
                _check_offsets(rng, taken)
                batch_bytes += buffer.nbytes
                buffer.nbytes = 0
                buffer.next_offset = last + 1
                self._building[(topic, partition)] = buffer.epoch
                batches.setdefault(topic, []).append((rng, taken))
        if self._feed is not None:
            self._feed.taken()
        if not batches:
            return

        writes: list[SinkBatch] = []
        for topic, parts in batches.items():
            catalogue_topic = self._catalogue[topic]
            event, table = TOPIC_EVENTS[catalogue_topic], TABLES[catalogue_topic]
            started = time.monotonic()
            # One decode and one check for all partitions: each call has a fixed cost.
            rows = self._decode(event, [messages for _, messages in parts])
            self.stats.decode_s += time.monotonic() - started
            writes.append(SinkBatch(table, event, rows, tuple(rng for rng, _ in parts)))
        # Dead letters are durable before the offsets that skip them are recorded.
        self._flush_dead_letters()
        failpoint(f"{self.sink.name}.before_write")
        sources = {(rng.topic, rng.partition): messages for parts in batches.values() for rng, messages in parts}
        written = [r for batch in writes for r in self._write(batch, sources)]
        failpoint(f"{self.sink.name}.after_write")
        self._commit(written)
        metrics.BATCH_ROWS.labels(self.sink.name).observe(sum(len(m) for parts in batches.values() for _, m in parts))
        metrics.BATCH_BYTES.labels(self.sink.name).observe(batch_bytes)
        metrics.FLUSH_SECONDS.labels(self.sink.name).observe(time.monotonic() - flush_started)

    def _decode(self, event: str, parts: list[list[Any]]) -> pa.Table:
        """The rows of ``parts`` (each the messages of one partition, in offset order) that decode
        and pass the value rules; the others are dead-lettered (by the loop that dead-letters) or
        skipped (by the others, which decide the same).

        Fields are read in bulk into numpy arrays (the partition column is one value per part): a
        Python list of ints to Arrow costs ten times as much.
        """
        parts = [p for p in parts if p]
        messages = list(chain.from_iterable(parts))
        screened = screen(self.decoder, messages, event, self.rules)
        table, positions, failures = screened.table, screened.positions, screened.failures
        partitions = np.repeat(np.array([p[0].partition() for p in parts], np.int32), [len(p) for p in parts])
        offsets = np.fromiter(map(Message.offset, messages), np.int64, len(messages))
        if failures and self._dead_letters_enabled:
            for index, error_class, message in sorted(failures):
                bad = messages[index]
                log.warning("%s: dead letter %s[%d]@%d: %s: %s", self.sink.name, bad.topic(), bad.partition(),
                            bad.offset(), error_class, message,
                            extra={"topic": bad.topic(), "partition": bad.partition(), "offset": bad.offset(),
                                   "error_class": error_class})
                if self._dlq.send(bad, error_class, message):
                    self.stats.dead_letters += 1
                    metrics.DEAD_LETTERS.labels(self.sink.name, self._catalogue.get(bad.topic(), ""), error_class).inc()
        table = self.free_text.table(event, table)
        if failures:
            partitions, offsets = partitions[positions], offsets[positions]
        table = table.append_column(PARTITION_COLUMN, pa.array(partitions))
        return table.append_column(OFFSET_COLUMN, pa.array(offsets))

    def _write(self, batch: SinkBatch, sources: dict[tuple[str, int], list[Any]], whole: bool = False) -> list[OffsetRange]:
        """Write ``batch`` until it is durable; the ranges it recorded. If the store refuses its rows
        for good, the rows go to the DLQ and only the ranges are recorded, so the partitions move on.

        :param whole: a recorded batch being replayed: written as it is, whatever this worker owns
            (its halted partitions aside).
        """
        refused = False

        def attempt() -> None:
            nonlocal batch, refused
            batch = self._owned(batch, whole)
            if not batch.ranges:
                return
            if refused:
                self.sink.write(SinkBatch(batch.table, batch.event, batch.rows.slice(0, 0), batch.ranges))
                return
            try:
                self.sink.write(batch)
            except TerminalError as exc:
                log.error("%s: %s: %s refused the rows for good: %s", self.sink.name,
                          batch_token(batch.ranges), batch.table, exc)
                self._dead_letter_rows(batch, sources, exc)
                # The refused rows are durable in the DLQ before their ranges move on.
                self._flush_dead_letters()
                refused = True
                attempt()

        started = time.monotonic()
        self._retry(attempt, f"writing {batch.table} {batch_token(batch.ranges)}")
        self.stats.write_s += time.monotonic() - started
        self.stats.batches += 1
        rows = 0 if refused else batch.rows.num_rows
        self.stats.written_rows += rows
        metrics.ROWS_WRITTEN.labels(self.sink.name, batch.table).inc(rows)
        self.stats.last_write_at = time.time()
        return list(batch.ranges)

    def _dead_letter_rows(self, batch: SinkBatch, sources: dict[tuple[str, int], list[Any]],
                          error: TerminalError) -> None:
        wanted = set(zip(batch.rows[PARTITION_COLUMN].to_pylist(), batch.rows[OFFSET_COLUMN].to_pylist()))
        for rng in batch.ranges:
            for msg in sources[(rng.topic, rng.partition)]:
                if (msg.partition(), msg.offset()) in wanted and self._dlq.send(msg, type(error).__name__, str(error)):
                    self.stats.dead_letters += 1
                    metrics.DEAD_LETTERS.labels(self.sink.name, self._catalogue.get(msg.topic(), ""),
                                                type(error).__name__).inc()

    def _flush_dead_letters(self) -> None:
        """Wait until every dead letter is durable; a letter refused for good halts its partition."""
        while True:
            try:
                self._retry(self._dlq.flush, "flushing dead letters")
                return
            except DeadLetterRefused as exc:
                # Halting discards the refused letters; the next flush waits for the others.
                for topic, partition in sorted({(t, p) for t, p, _ in exc.sources}):
                    self._halt(topic, partition, str(exc))

    def _halt(self, topic: str, partition: int, why: str) -> None:
        """Stop ``topic[partition]`` for good in this process: nothing past the refused letter is
        recorded, so a restart (once the DLQ takes the letter) reads it again."""
        from confluent_kafka import TopicPartition

        key = (topic, partition)
        with self._lock:
            self._buffers.pop(key, None)
            self._halted.add(key)
        self._dlq.discard(topic, partition)
        self.stats.halted[f"{topic}[{partition}]"] = why
        metrics.HALTED_PARTITIONS.labels(self.sink.name).set(len(self._halted))
        log.error("%s: %s[%d] halted: a dead letter was refused for good, so its offsets are not recorded "
                  "and the partition waits for an operator (the other partitions go on): %s",
                  self.sink.name, topic, partition, why, extra={"topic": topic, "partition": partition})
        if self._feed is not None:
            self._feed.halt(topic, partition)
        elif self._consumer is not None:
            self._consumer.pause([TopicPartition(topic, partition)])

    def _owned(self, batch: SinkBatch, whole: bool = False) -> SinkBatch:
        """``batch`` without the partitions revoked since it was built, or assigned again since (a
        new epoch: the new buffer rebuilds them from the sink's record) or halted; whole if the
        sink recorded it already (the resume points of those partitions name it) and none halted,
        or if it is such a batch being replayed (``whole``) and none halted.

        A halted partition's range is never recorded, even in a recorded batch: that batch then
        goes on without it only after its rows were refused (nothing of it is inserted), and the
        range stays unwritten, so a restart reads the whole batch again.
        """
        halted = any((r.topic, r.partition) in self._halted for r in batch.ranges)
        if whole:
            owned = tuple(r for r in batch.ranges if (r.topic, r.partition) not in self._halted)
        else:
            owned = tuple(r for r in batch.ranges if self._current(r.topic, r.partition))
        if len(owned) == len(batch.ranges):
            return batch
        if not whole and not halted and self.sink.recorded(batch):
            return batch
        keep = pa.array([r.partition for r in owned], pa.int32())
        rows = batch.rows.filter(pc.is_in(batch.rows[PARTITION_COLUMN], value_set=keep))
        return SinkBatch(batch.table, batch.event, rows, owned)

    def _current(self, topic: str, partition: int) -> bool:
        with self._lock:
            buffer = self._buffers.get((topic, partition))
            return buffer is not None and buffer.epoch == self._building.get((topic, partition))

    def _commit(self, ranges: list[OffsetRange]) -> None:
        """Commit the group's offsets after the sink's write: for lag monitoring only."""
        from confluent_kafka import KafkaException, TopicPartition

        for r in ranges:
            self._dlq.forget_below(r.topic, r.partition, r.last + 1)  # recorded: never read again here
        # A replayed batch may hold partitions another member owns: their offsets are its to commit.
        with self._lock:
            offsets = [TopicPartition(r.topic, r.partition, r.last + 1) for r in ranges
                       if (r.topic, r.partition) in self._buffers]
        if not offsets:
            return
        if self._feed is not None:
            self._feed.commit(self, offsets)
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.info("%s: offset commit skipped: %s", self.sink.name, exc)

    def _retry(self, action: Callable[[], Any], what: str) -> Any:
        """Run ``action`` until it succeeds, backing off while it raises TransientError.

        Consumption is paused meanwhile, and the consumer keeps being polled so the group
        membership stays alive and rebalances are served.
        """
        backoff = self._backoff()
        while True:
            try:
                result = action()
            except TransientError as exc:
                if self._stop.is_set():
                    # Nothing of this batch is recorded, so a restart reads it again.
                    raise _Abandoned(f"{what}: {exc}") from None
                delay = backoff.next()
                self.stats.retries += 1
                metrics.RETRIES.labels(self.sink.name).inc()
                log.warning("%s: %s failed (%s); retrying in %.1f s", self.sink.name, what, exc, delay)
                self._pause(True)
                if self._feed is not None:
                    self._back_off(delay)
                else:
                    end = time.monotonic() + delay
                    while time.monotonic() < end:
                        if self._consumer is not None:
                            self._poll_paused(min(0.5, end - time.monotonic()))
                        else:
                            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
                continue
            self._pause(False)
            return result

    def _back_off(self, delay: float) -> None:
        """Wait ``delay`` seconds as a lane of a feed, which serves rebalances meanwhile: the step
        lets them in while it waits, and checks the partitions it holds again when it goes on."""
        stepping = self._in_step
        if stepping:
            self._in_step = False
            self._busy.release()
        try:
            self._stop.wait(delay)
        finally:
            if stepping:
                self._busy.acquire()
                self._in_step = True

    def _poll_paused(self, timeout_s: float) -> None:
        # Paused partitions deliver nothing; this serves heartbeats and rebalance callbacks.
        self._poll(max(timeout_s, 0.0))

    def _pause(self, paused: bool) -> None:
        if paused == self.stats.paused:
            return
        if self._feed is not None:
            # The feed pauses its whole assignment while any of its lanes backs off.
            self._feed.hold(self, paused)
            with self._lock:
                held = len(self._buffers)
        elif self._consumer is None:
            return
        else:
            assignment = [tp for tp in self._consumer.assignment() if (tp.topic, tp.partition) not in self._halted]
            if assignment:
                (self._consumer.pause if paused else self._consumer.resume)(assignment)
            held = len(assignment)
        self.stats.paused = paused
        metrics.PAUSED_PARTITIONS.labels(self.sink.name).set(held if paused else 0)

    # -- replaying recorded batches ------------------------------------------------------------

    def _replay(self) -> None:
        """Rebuild and write each recorded batch the resume points named, whole, then let its
        partitions go on; returns early, leaving the rest to the next start, when asked to stop."""
        with self._lock:
            replays = list(self._replays.items())
        for token, ranges in replays:
            messages = read_ranges(self.settings, ranges, group=f"{self.group}.replay", stop=self._stop,
                                   who=self.sink.name, fetch_messages=self.fetch_messages)
            if messages is None:
                return
            catalogue_topic = self._catalogue[ranges[0].topic]
            event, table = TOPIC_EVENTS[catalogue_topic], TABLES[catalogue_topic]
            started = time.monotonic()
            rows = self._decode(event, [messages[(r.topic, r.partition)] for r in ranges])
            self.stats.decode_s += time.monotonic() - started
            self._flush_dead_letters()
            written = self._write(SinkBatch(table, event, rows, ranges), messages, whole=True)
            log.info("%s: wrote the recorded batch %s again (%d rows)", self.sink.name, spans(ranges), rows.num_rows)
            self._commit(written)
            with self._lock:
                self._replays.pop(token, None)
                for buffer in self._buffers.values():
                    if buffer.waits_for == token:
                        buffer.waits_for = None
                        buffer.since = time.monotonic()

    # -- rebalancing ---------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        starts = self.assign(partitions)
        for tp in partitions:
            tp.offset = starts[(tp.topic, tp.partition)]
        consumer.assign(partitions)
        if self.stats.paused:
            consumer.pause(partitions)

    def assign(self, partitions: list[Any]) -> dict[tuple[str, int], int]:
        """Take ``partitions`` (a rebalance's assignment): read the sink's resume points, start a
        buffer (a new epoch) for each; where to read each from (an offset, or ``OFFSET_BEGINNING``).
        Waits for the step under way to end."""
        from confluent_kafka import OFFSET_BEGINNING

        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        points: dict[tuple[str, int], ResumePoint] = {}
        for topic, parts in by_topic.items():
            found = self._retry_in_callback(lambda t=topic, p=parts: self.sink.resume_points(t, p))
            points.update({(topic, p): rp for p, rp in found.items()})
        starts = {}
        with self._exclusive(), self._lock:
            self._epoch += 1
            for tp in partitions:
                key = (tp.topic, tp.partition)
                point = points.get(key)
                starts[key] = point.next_offset if point else OFFSET_BEGINNING
                # A partition halted here before gets another chance with its new assignment.
                self._halted.discard(key)
                waits_for = None
                if point is not None and point.replay:
                    waits_for = batch_token(point.replay)
                    self._replays[waits_for] = point.replay
                self._buffers[key] = _PartitionBuffer(
                    next_offset=point.next_offset if point else 0, epoch=self._epoch, waits_for=waits_for)
            log.info("%s: assigned %s", self.sink.name, _describe(partitions, with_offsets=True, starts=starts))
            if self._replays:
                log.info("%s: recorded batches to write again first: %s", self.sink.name,
                         "; ".join(spans(r) for r in self._replays.values()))
        self._wake.set()
        return starts

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.revoke(partitions)
        consumer.unassign()

    def revoke(self, partitions: list[Any]) -> None:
        """Give ``partitions`` up, with what is buffered of them; waits for the step under way to end."""
        with self._exclusive(), self._lock:
            for tp in partitions:
                self._buffers.pop((tp.topic, tp.partition), None)
                self._halted.discard((tp.topic, tp.partition))
                if self._dlq is not None:
                    # Letters still pending for the partition are its new owner's to send again.
                    self._dlq.discard(tp.topic, tp.partition)
            # A replay none of whose partitions is held here any more is their new owners' to do.
            for token, ranges in list(self._replays.items()):
                if not any((r.topic, r.partition) in self._buffers for r in ranges):
                    del self._replays[token]
        log.info("%s: revoked %s", self.sink.name, _describe(partitions, with_offsets=False))

    def _retry_in_callback(self, action: Callable[[], Any]) -> Any:
        # Inside a rebalance callback the consumer must not be polled: plain back-off.
        backoff = self._backoff()
        while True:
            try:
                return action()
            except TransientError as exc:
                if self._stop.is_set():
                    raise
                delay = backoff.next()
                log.warning("%s: reading resume points failed (%s); retrying in %.1f s", self.sink.name, exc, delay)
                time.sleep(delay)

    def _backoff(self) -> Backoff:
        """Retries of a store call: 0.5 s doubling to ``EZ_SINK_RETRY_MAX_SECONDS``."""
        return Backoff(min(0.5, self.settings.sink_retry_max_seconds), self.settings.sink_retry_max_seconds)


def _check_offsets(rng: OffsetRange, messages: list[Any]) -> None:
    """The range a batch records covers exactly the messages it holds, in order."""
    offsets = list(map(Message.offset, messages))
    if offsets and (offsets[0] < rng.first or offsets[-1] > rng.last
                    or not all(map(operator.lt, offsets, offsets[1:]))):
        raise RuntimeError(f"batch {rng.token} holds offsets {offsets[0]}..{offsets[-1]} out of order or "
                           "outside its range: refusing to record it")


def consumer_settings(group: str) -> dict[str, Any]:
    """The settings of a sink loop's consumer in ``group`` (a loop's own, or a feed's)."""
    return {
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # Bounded prefetch: memory stays flat however far behind the loop is.
        "queued.max.messages.kbytes": 32768,
        "fetch.max.bytes": 16 * 1024 * 1024,
        "max.poll.interval.ms": 600_000,
        # A worker killed with -9 gives up its partitions after this, not after 45 s.
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        # Per-partition lag for the metrics.
        "statistics.interval.ms": 5_000,
        "stats_cb": metrics.lag_from_statistics(group),
    }


def fetched_runs(messages: list[Any], who: str) -> list[tuple[tuple[str, int], list[Any], list[int]]]:
    """A fetch as runs of one partition: ((topic, partition), messages, their offsets).

    librdkafka hands a fetch over as runs of one partition, in offset order: each run is checked
    and buffered as a whole, the fields read in bulk (``map`` over the C methods), with no Python
    code per message. Error events are logged and left out; a fatal one is raised.
    """
    if any(map(Message.error, messages)):
        messages = _without_errors(messages, who)
    offsets = list(map(Message.offset, messages))
    runs = []
    start = 0
    for key, run in groupby(zip(map(Message.topic, messages), map(Message.partition, messages))):
        end = start + len(list(run))
        runs.append((key, messages[start:end], offsets[start:end]))
        start = end
    return runs


def _without_errors(messages: list[Any], who: str) -> list[Any]:
    """``messages`` without the error events, which are logged (or raised, when fatal)."""
    from confluent_kafka import KafkaError, KafkaException

    kept = []
    for msg in messages:
        err = msg.error()
        if err is None:
            kept.append(msg)
        elif err.fatal():
            raise KafkaException(err)
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning("%s: consumer error: %s", who, err.str())
    return kept


def _describe(partitions: list[Any], with_offsets: bool, starts: dict[tuple[str, int], int] | None = None) -> str:
    """``topic[0@12,1@start]; other[2]``: short enough for one log line."""
    by_topic: dict[str, list[str]] = {}
    for tp in partitions:
        offset = starts[(tp.topic, tp.partition)] if starts is not None else tp.offset
        where = "" if not with_offsets else f"@{offset}" if offset >= 0 else "@start"
        by_topic.setdefault(tp.topic, []).append(f"{tp.partition}{where}")
    return "; ".join(f"{topic}[{','.join(parts)}]" for topic, parts in sorted(by_topic.items())) or "nothing"
