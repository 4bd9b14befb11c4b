"""The shared batch loop with a real broker and a sink of the test's own (recording, refusing)."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.errors import TerminalError, TransientError
from connectors.kafka import client_config
from connectors.kafka.dlq import ERROR_CLASS, read_dead_letters
from connectors.kafka.topics import catalogue, dlq_topic, ensure_topics, topic_name
from connectors.settings import load_settings
from connectors.sink import ResumePoint, Sink, SinkBatch
from streams.sinks.runner import FlushPolicy, SinkRunner
from tests.conftest import wait_for
from tests.integration.pipeline import SIMULATED, Truth, produce_simulated
from tests.integration.topics import end_offsets


def partition_ends(settings) -> dict[tuple[str, int], int]:
    """The last offset of every partition of the :data:`SIMULATED` topics (-1: empty)."""
    return {tp: end - 1 for tp, end in end_offsets(settings, [topic_name(settings, t) for t in SIMULATED]).items()}


class RecordingSink(Sink):
    """Keeps what it is given in memory; refuses batches holding ``refuse_agent``, fails transiently
    ``transient`` times first."""

    name = "lake"

    def __init__(self, refuse_agent: str | None = None, transient: int = 0) -> None:
        self.rows: list[pa.Table] = []
        self.recorded: dict[tuple[str, int], int] = {}
        self.refuse_agent = refuse_agent
        self.transient = transient

    def setup(self) -> None:
        pass

    def resume_points(self, topic, partitions):
        return {p: ResumePoint(self.recorded[(topic, p)] + 1) for p in partitions if (topic, p) in self.recorded}

    def write(self, batch: SinkBatch) -> None:
        if self.transient:
            self.transient -= 1
            raise TransientError("store briefly unavailable")
        if self.refuse_agent and self.refuse_agent in batch.rows["agent_id"].to_pylist():
            raise TerminalError(f"{batch.table}: rows of {self.refuse_agent} do not fit")
        self.rows.append(batch.rows)
        for r in batch.ranges:
            self.recorded[(r.topic, r.partition)] = r.last

    def count(self) -> int:
        return sum(t.num_rows for t in self.rows)


def _run(settings, sink):
    runner = SinkRunner(settings, sink, policy=FlushPolicy(max_rows=500, max_bytes=1 << 30, max_age_s=0.3),
                        dead_letters=True)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return runner, thread


def test_refused_rows_go_to_the_dlq_and_the_partitions_move_on(stack, stack_overrides, unique):
    settings = load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}.", "topic_partitions": 2,
                                "sink_retry_max_seconds": 0.5})
    ensure_topics(settings, catalogue(settings))
    truth = Truth()
    produce_simulated(settings, 2000, seed=21, truth=truth)
    sink = RecordingSink(refuse_agent="research-07", transient=2)
    runner, thread = _run(settings, sink)
    try:
        topics = [topic_name(settings, t) for t in SIMULATED]

        def all_recorded():
            ends = partition_ends(settings)
            return all(sink.recorded.get(k, -1) == v for k, v in ends.items() if v >= 0)

        wait_for(all_recorded, 60, "every partition recorded to its end")
    finally:
        runner.stop()
        thread.join(60)
    assert runner.stats.retries >= 2  # the transient failures were retried, not fatal
    refused = 2000 - sink.count()
    assert refused > 0
    letters = []
    for t in topics:
        letters += read_dead_letters(settings, dlq_topic(t))
    assert len(letters) == refused
    assert {l.headers[ERROR_CLASS] for l in letters} == {"TerminalError"}
    agents = {a for t in sink.rows for a in t["agent_id"].to_pylist()}
    assert "research-07" not in agents and len(agents) > 10
    assert sink.count() + refused == 2000


class OtherSink(RecordingSink):
    name = "clickhouse"


def test_a_shared_feed_reads_once_and_each_lane_writes_from_its_own_record(stack, stack_overrides, unique):
    from streams.sinks.feed import SharedFeed, sink_group

    settings = load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}.", "topic_partitions": 2,
                                "sink_retry_max_seconds": 0.5})
    ensure_topics(settings, catalogue(settings))
    truth = Truth()
    produce_simulated(settings, 2000, seed=22, truth=truth)
    topic = topic_name(settings, "agent.llm_calls")
    # One sink has written part of a partition already: its lane resumes there, the other from the
    # start, and the feed reads the partition once, from the lower of the two.
    ahead = RecordingSink(transient=3)  # and it fails its first writes, so the feed holds
    ahead.recorded[(topic, 0)] = 99
    behind = OtherSink()
    policy = FlushPolicy(max_rows=300, max_bytes=1 << 30, max_age_s=0.3)
    lanes = [SinkRunner(settings, sink, policy=policy, dead_letters=sink is ahead) for sink in (ahead, behind)]
    feed = SharedFeed(settings, lanes)
    thread = threading.Thread(target=feed.run, daemon=True)
    thread.start()
    try:
        ends = partition_ends(settings)
        wait_for(lambda: all(s.recorded.get(k, -1) == v for s in (ahead, behind) for k, v in ends.items() if v >= 0),
                 90, "both lanes recording every partition to its end")
    finally:
        feed.stop()
        thread.join(60)
    assert not thread.is_alive()
    skipped = 100  # offsets 0..99 of llm_calls[0], recorded by the lane that is ahead before it started
    assert behind.count() == 2000 and ahead.count() == 2000 - skipped
    for sink in (ahead, behind):
        ids = [i for t in sink.rows for i in t["event_id"].to_pylist()]
        assert len(ids) == len(set(ids))  # nothing written twice
    assert feed.consumed == 2000  # each message fetched once for both lanes
    assert lanes[0].stats.retries >= 3 and lanes[1].stats.retries == 0
    # Each lane's offsets are committed to its sink's own group, as a loop of its own commits them.
    for lane in lanes:
        reader = Consumer(client_config(settings, **{"group.id": sink_group(settings, lane.name)}))
        try:
            committed = reader.committed([TopicPartition(t, p) for t, p in ends], timeout=10)
        finally:
            reader.close()
        assert {(tp.topic, tp.partition): tp.offset - 1 for tp in committed} == ends


def test_a_worker_of_the_other_layout_is_refused_at_start(stack, stack_overrides, unique):
    from connectors.errors import ConfigError
    from streams.sinks.feed import check_layout, sink_group

    settings = load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}.", "topic_partitions": 2})
    ensure_topics(settings, catalogue(settings))
    check_layout(settings, shared=True, wait_s=0)  # no one consumes yet
    member = Consumer(client_config(settings, **{"group.id": sink_group(settings, "lake"), "session.timeout.ms": 10_000}))
    member.subscribe([topic_name(settings, "agent.tasks")], on_assign=lambda c, parts: assigned.append(parts))
    assigned: list = []
    try:
        wait_for(lambda: member.poll(0.2) is None and assigned, 60, "the lake-only member's assignment", interval_s=0)
        with pytest.raises(ConfigError, match=rf"{sink_group(settings, 'lake')} \(1 members\).*--only lake"):
            check_layout(settings, shared=True, wait_s=0)
        check_layout(settings, shared=False, wait_s=0)  # the same layout: fine
    finally:
        member.close()


def test_a_caught_up_loop_writes_at_its_quiet_age_and_one_without_waits_for_its_limits(stack, stack_overrides, unique):
    from streams.sinks.feed import SharedFeed

    # Two lanes of a feed on one set of topics, a loop of its own on another.
    shared, apart = (load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}.{name}.", "topic_partitions": 2})
                     for name in ("feed", "own"))
    for settings in (shared, apart):
        ensure_topics(settings, catalogue(settings))
        produce_simulated(settings, 300, seed=23, truth=Truth())

    def policy(quiet_age_s: float) -> FlushPolicy:
        # No batch can fill or age (10 minutes) during the test: only the quiet age writes one.
        return FlushPolicy(max_rows=100_000, max_bytes=1 << 30, max_age_s=600.0, quiet_age_s=quiet_age_s)

    quick, slow, alone = RecordingSink(), OtherSink(), RecordingSink()
    lanes = [SinkRunner(shared, quick, policy=policy(0.2), dead_letters=True),
             SinkRunner(shared, slow, policy=policy(0.0))]
    feed = SharedFeed(shared, lanes)
    own = SinkRunner(apart, alone, policy=policy(0.2), dead_letters=True)
    threads = [threading.Thread(target=target, daemon=True) for target in (feed.run, own.run)]
    for thread in threads:
        thread.start()
    try:
        wanted = [(sink, partition_ends(settings))
                  for sink, settings in ((quick, shared), (alone, apart))]
        wait_for(lambda: all(s.recorded.get(k, -1) == v for s, e in wanted for k, v in e.items() if v >= 0),
                 60, "the quiet lane and the loop of its own recording every partition to its end")
        assert quick.count() == alone.count() == 300
        assert slow.count() == 0 and slow.recorded == {}  # caught up as well, it waits for its limits
    finally:
        feed.stop()
        own.stop()
        for thread in threads:
            thread.join(60)
    assert slow.count() == 300  # written at stop
