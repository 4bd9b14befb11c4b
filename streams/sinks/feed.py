"""One consumer for every sink of a worker: each message fetched once, handed to each sink's loop.

A worker with both sink roles (``lake`` and ``clickhouse``) used to run one consumer per sink,
so every message crossed the network, librdkafka and the Python message objects twice. A
:class:`SharedFeed` holds the one consumer, in the consumer group ``<prefix>ezstream.sinks``, and
each sink's :class:`~streams.sinks.runner.SinkRunner` becomes one of its lanes: the feed hands
every lane the same messages (the same objects), and each lane buffers, flushes, decodes and
writes in a thread of its own, at its own flush policy, exactly as a loop of its own does.

What the feed keeps the same:

- **Where each sink resumes** stays the sink's record. On assignment the feed asks every lane for
  its resume points and reads each partition from the lowest; a lane leaves out what it already
  wrote (:meth:`SinkRunner._buffer`).
- **Rebalances are served between steps.** A lane holds its step lock for a whole flush or replay
  except while a write backs off, and the feed's rebalance callbacks wait for it: no partition
  is given up in the middle of a write, as with a loop that polls its own consumer.
- **Bounded memory.** While a lane holds a full batch it has not taken yet, the feed stops
  fetching (it still serves the group every half second); while a lane backs off, the feed
  pauses its whole assignment, as a loop of its own pauses its consumer. So one store that is
  down stops the other sink of the same worker too; run ``--only lake`` and ``--only clickhouse``
  workers to keep them apart.
- **Lag per sink.** Each lane's written offsets are committed to the sink's own group
  (``<prefix>ezstream.lake``, ``<prefix>ezstream.clickhouse``: for monitoring only, as ever) by a
  client that never joins it, so ``ezstream status``, the lag metrics and the bench read the same
  groups whatever the layout.

One layout at a time: a worker with both sink roles and a worker with one of them would each
take the same partitions in different groups and write them both. :func:`check_layout` refuses to
start a loop while the other layout's group has members, after waiting for a stopped worker's
session to end.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING

from connectors.errors import ConfigError
from connectors.kafka.config import client_config
from connectors.kafka.topics import topic_name
from connectors.settings import Settings
from connectors.sink import TABLES
from streams import metrics
from streams.sinks.runner import SinkRunner, consumer_settings, fetched_runs

log = logging.getLogger(__name__)

#: The sink roles; a worker running all of them reads through one :class:`SharedFeed`.
SINK_ROLES = ("lake", "clickhouse")

#: How long a feed goes without serving the group while a lane holds a full batch.
_SERVE_EVERY_S = 0.5
#: Messages taken, at most, when it serves the group then.
_WHILE_FULL = 100


def sink_group(settings: Settings, role: str) -> str:
    """The consumer group of a sink loop of its own, and where a lane's offsets are committed."""
    return f"{settings.topic_prefix}ezstream.{role}"


def shared_group(settings: Settings) -> str:
    """The consumer group of a worker's :class:`SharedFeed`."""
    return f"{settings.topic_prefix}ezstream.sinks"


def check_layout(settings: Settings, shared: bool, wait_s: float = 30.0) -> None:
    """Refuse to consume while workers of the other layout do (see the module's docstring).

    A worker killed a moment ago stays a member until its session times out (10 s), so this
    waits up to ``wait_s`` for the other groups to empty before it refuses.

    :raises ConfigError: the other layout's group still has members; the message names them.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    others = [sink_group(settings, r) for r in SINK_ROLES] if shared else [shared_group(settings)]
    admin = AdminClient(client_config(settings))
    deadline = time.monotonic() + wait_s
    while True:
        busy: dict[str, int] = {}
        unknown: dict[str, str] = {}
        for group, future in admin.describe_consumer_groups(others, request_timeout=10).items():
            try:
                members = future.result().members
            except KafkaException as exc:  # a coordinator still loading, most often: asked again
                unknown[group] = str(exc)
                continue
            if members:
                busy[group] = len(members)
        if not busy and not unknown:
            return
        if not busy and time.monotonic() >= deadline:
            for group, why in unknown.items():
                log.warning("could not tell whether consumer group %s has members (%s): going on", group, why)
            return
        if time.monotonic() >= deadline:
            mine = "one consumer for both sinks" if shared else "a consumer of its own per sink"
            raise ConfigError(
                f"other sink workers are consuming in {', '.join(f'{g} ({n} members)' for g, n in busy.items())}: "
                f"this worker reads with {mine}, and two layouts at once would write the same partitions twice. "
                "Run every sink worker with both sink roles, or every one with --only lake / --only clickhouse")
        time.sleep(1.0)


class SharedFeed:
    """Consumes the catalogue topics once for several sink loops (its lanes) until stopped.

    Runs in the thread that calls :meth:`run`, and each lane in a thread of its own. A lane that
    fails stops the others and the feed, and :meth:`run` raises its error.
    """

    name = "sinks"

    def __init__(self, settings: Settings, lanes: list[SinkRunner], *, fetch_messages: int = 10_000) -> None:
        if not lanes:
            raise ValueError("a feed needs at least one lane")
        self.settings = settings
        self.lanes = lanes
        self.fetch_messages = fetch_messages
        self.group = shared_group(settings)
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: Lanes backing off a failed write: the assignment stays paused while any does.
        self._holding: set[str] = set()
        #: Partitions a lane halted, to pause (until assigned again), and those paused so.
        self._to_halt: set[tuple[str, int]] = set()
        self._halted: set[tuple[str, int]] = set()
        #: Offsets written by each lane, to commit to its sink's group.
        self._commits: list[tuple[SinkRunner, list[Any]]] = []
        #: Next offset to write, per sink group and partition (lag metrics); OFFSET_BEGINNING if unknown.
        self._positions: dict[str, dict[tuple[str, int], int]] = {lane.group: {} for lane in lanes}
        self._taken = threading.Event()
        self._failed: BaseException | None = None
        self._paused = False
        self._consumer: Any = None
        self.consumed = 0
        self.poll_s = 0.0
        self._topics = [topic_name(settings, t) for t in TABLES]
        for lane in lanes:
            lane.attach(self)

    # -- what lanes ask for (from their threads) -------------------------------------------------

    def hold(self, lane: SinkRunner, holding: bool) -> None:
        """Pause the assignment while ``lane`` backs off (``holding``), or let it go on."""
        with self._lock:
            (self._holding.add if holding else self._holding.discard)(lane.name)

    def halt(self, topic: str, partition: int) -> None:
        """Stop reading ``topic[partition]`` until it is assigned again (a lane halted it)."""
        with self._lock:
            self._to_halt.add((topic, partition))

    def commit(self, lane: SinkRunner, offsets: list[Any]) -> None:
        """Commit ``offsets`` (written by ``lane``) to the lane's sink group, for monitoring."""
        with self._lock:
            self._commits.append((lane, offsets))

    def taken(self) -> None:
        """A lane took its buffers for a flush: a full feed may read on."""
        self._taken.set()

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask every lane to finish (each writes what it holds), then the feed."""
        self._stop.set()
        for lane in self.lanes:
            lane.stop()

    def run(self) -> None:
        """Run until :meth:`stop`; raises what made a lane fail."""
        from confluent_kafka import Consumer

        threads = [threading.Thread(target=self._run_lane, args=(lane,), name=f"lane:{lane.name}", daemon=True)
                   for lane in self.lanes]
        for thread in threads:
            thread.start()
        committers: dict[str, Any] = {}
        try:
            while not all(lane.set_up.wait(0.1) for lane in self.lanes):
                if self._stop.is_set() or self._failed is not None:
                    break
            else:
                check_layout(self.settings, shared=True)
                self._consumer = Consumer(client_config(self.settings, **{
                    **consumer_settings(self.group), "stats_cb": self._record_lag}))
                # Clients that never join the sinks' groups: they commit each lane's offsets there.
                committers = {lane.group: Consumer(client_config(self.settings, **{
                    "group.id": lane.group, "enable.auto.commit": False})) for lane in self.lanes}
                self._consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                         on_lost=self._on_revoke)
                for lane in self.lanes:
                    lane.ready.set()
                self.ready.set()
                self._loop(threads, committers)
        except BaseException:
            self.stop()
            raise
        finally:
            for thread in threads:
                thread.join()
            if self._consumer is not None:
                self._apply(committers)
                log.info("sinks: stopping the shared consumer after %d messages; seconds fetching %.1f",
                         self.consumed, self.poll_s)
                self._consumer.close()
            for committer in committers.values():
                committer.close()
        if self._failed is not None:
            raise self._failed

    def _run_lane(self, lane: SinkRunner) -> None:
        try:
            lane.run()
        except BaseException as exc:  # noqa: BLE001  the worker must stop, loudly, on any crash
            log.exception("%s: the sink loop failed; stopping the worker's sinks", lane.name)
            if self._failed is None:
                self._failed = exc
            self.stop()

    def _loop(self, threads: list[threading.Thread], committers: dict[str, Any]) -> None:
        served = time.monotonic()
        while any(thread.is_alive() for thread in threads):
            self._apply(committers)
            if self._stop.is_set() or any(lane.over_bound() for lane in self.lanes):
                # Read nothing new (a lane is full, or everything stops), but serve the group.
                if time.monotonic() - served < _SERVE_EVERY_S:
                    self._taken.wait(0.05)
                    self._taken.clear()
                    continue
                self._poll(_WHILE_FULL, timeout_s=0.0)
            else:
                self._poll(self.fetch_messages, timeout_s=0.1)
            served = time.monotonic()

    def _poll(self, count: int, timeout_s: float) -> None:
        started = time.monotonic()
        messages = self._consumer.consume(count, timeout=timeout_s)
        if messages:
            runs = fetched_runs(messages, self.name)
            now = time.monotonic()
            for lane in self.lanes:
                lane.take(runs, now)
            self.consumed += len(messages)
        elif timeout_s > 0 and not self._paused:
            for lane in self.lanes:
                lane.quiet()
        self.poll_s += time.monotonic() - started

    def _apply(self, committers: dict[str, Any]) -> None:
        """Carry out what the lanes asked for: pauses, halts, commits (only this thread touches
        the consumer)."""
        from confluent_kafka import KafkaException, TopicPartition

        with self._lock:
            holding = bool(self._holding) or self._stop.is_set()
            halts, self._to_halt = self._to_halt, set()
            commits, self._commits = self._commits, []
        if halts:
            self._halted |= halts
            self._consumer.pause([TopicPartition(t, p) for t, p in sorted(halts)])
        if holding != self._paused:
            assignment = [tp for tp in self._consumer.assignment() if (tp.topic, tp.partition) not in self._halted]
            if assignment:
                (self._consumer.pause if holding else self._consumer.resume)(assignment)
            self._paused = holding
        for lane, offsets in commits:
            positions = self._positions[lane.group]
            for tp in offsets:
                positions[(tp.topic, tp.partition)] = tp.offset
            try:
                committers[lane.group].commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.info("%s: offset commit skipped: %s", lane.name, exc)

    # -- rebalancing -----------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        starts = [lane.assign(partitions) for lane in self.lanes]
        for tp in partitions:
            key = (tp.topic, tp.partition)
            # The lowest: OFFSET_BEGINNING (negative) if any lane starts from the beginning.
            tp.offset = min(s[key] for s in starts)
            self._halted.discard(key)
            for lane, lane_starts in zip(self.lanes, starts):
                self._positions[lane.group][key] = lane_starts[key]
        consumer.assign(partitions)
        if self._paused:
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        for lane in self.lanes:
            lane.revoke(partitions)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._halted.discard(key)
            for positions in self._positions.values():
                positions.pop(key, None)
        consumer.unassign()

    def _record_lag(self, stats_json: str) -> None:
        """librdkafka's statistics -> the lag of each lane's sink group, per partition."""
        try:
            stats: dict[str, Any] = json.loads(stats_json)
        except ValueError:
            return
        for topic, info in stats.get("topics", {}).items():
            for partition, p in info.get("partitions", {}).items():
                if partition == "-1":
                    continue
                end = p.get("ls_offset", -1)
                for group, positions in self._positions.items():
                    position = positions.get((topic, int(partition)))
                    if position is None or end < 0:
                        continue
                    if position == OFFSET_BEGINNING or position < 0:
                        position = p.get("lo_offset", -1)
                        if position < 0:
                            continue
                    metrics.CONSUMER_LAG.labels(group, topic, partition).set(max(end - position, 0))
