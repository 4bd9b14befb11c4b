"""How the sink loop buffers a fetched run of one partition (streams/sinks/runner.py)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Message

from connectors.settings import load_settings
from connectors.sink import OffsetRange
from streams.sinks.runner import FlushPolicy, SinkRunner, _check_offsets, _PartitionBuffer


def run(*offsets: int) -> tuple[list[Message], list[int]]:
    messages = [Message(topic="t", partition=0, offset=o, value=b"x" * (o % 7)) for o in offsets]
    return messages, list(offsets)


def test_a_run_in_order_is_buffered_whole_with_its_size():
    buffer = _PartitionBuffer(next_offset=10, epoch=1)
    SinkRunner._buffer(buffer, *run(10, 11, 12), now=5.0)
    assert [m.offset() for m in buffer.messages] == [10, 11, 12]
    assert buffer.last_offset == 12 and buffer.since == 5.0
    assert buffer.nbytes == sum(o % 7 for o in (10, 11, 12))


def test_what_the_buffer_holds_or_wrote_is_left_out_when_delivered_again():
    buffer = _PartitionBuffer(next_offset=10, epoch=1)
    SinkRunner._buffer(buffer, *run(8, 9, 10, 11), now=1.0)  # 8, 9: written before
    SinkRunner._buffer(buffer, *run(10, 11, 12), now=2.0)  # after a seek back: 10, 11 again
    assert [m.offset() for m in buffer.messages] == [10, 11, 12]
    assert buffer.since == 1.0  # the age of the oldest buffered message


def test_a_run_out_of_order_keeps_only_what_moves_forward():
    buffer = _PartitionBuffer(next_offset=0, epoch=1)
    SinkRunner._buffer(buffer, *run(0, 1, 5, 3, 6), now=1.0)
    assert [m.offset() for m in buffer.messages] == [0, 1, 5, 6]


def test_a_run_entirely_held_already_changes_nothing():
    buffer = _PartitionBuffer(next_offset=20, epoch=1)
    SinkRunner._buffer(buffer, *run(18, 19), now=1.0)
    assert buffer.messages == [] and buffer.nbytes == 0 and buffer.since == 0.0


def test_a_batch_is_recorded_only_for_the_offsets_it_holds_in_order():
    messages, _ = run(4, 5, 7)
    _check_offsets(OffsetRange("t", 0, 4, 7), messages)  # a gap (a transaction marker) is fine
    for rng, held in ((OffsetRange("t", 0, 5, 7), messages), (OffsetRange("t", 0, 4, 6), messages),
                      (OffsetRange("t", 0, 4, 7), run(4, 7, 5)[0])):
        with pytest.raises(RuntimeError, match="refusing to record it"):
            _check_offsets(rng, held)


class _Named:
    name = "clickhouse"


def _runner(quiet_age_s: float) -> SinkRunner:
    runner = SinkRunner(load_settings(), _Named(),  # type: ignore[arg-type]
                        policy=FlushPolicy(max_rows=1000, max_bytes=1 << 30, max_age_s=30.0, quiet_age_s=quiet_age_s))
    runner._buffers[("t", 0)] = _PartitionBuffer(next_offset=0, epoch=1)
    return runner


def test_a_caught_up_loop_writes_a_batch_once_it_is_quiet_age_old_not_at_the_max_age():
    runner = _runner(quiet_age_s=0.2)
    messages, offsets = run(0, 1, 2)
    runner.take([(("t", 0), messages, offsets)], now=time.monotonic() - 0.5)
    assert not runner._due()  # half a second old, far from 30 s, and the fetch brought messages
    runner.quiet()  # the next fetch waited and brought nothing
    assert runner._due()
    more, offsets = run(3)
    runner.take([(("t", 0), more, offsets)], now=time.monotonic())
    assert not runner._due()  # messages again: not caught up, the batch waits for a limit
    runner.quiet()
    assert runner._due()


def test_a_quiet_loop_keeps_a_batch_younger_than_the_quiet_age_and_zero_turns_it_off():
    young = _runner(quiet_age_s=0.2)
    messages, offsets = run(0, 1)
    young.take([(("t", 0), messages, offsets)], now=time.monotonic() + 60)  # as young as can be
    young.quiet()
    assert not young._due()
    off = _runner(quiet_age_s=0.0)
    off.take([(("t", 0), messages, offsets)], now=time.monotonic() - 10)
    off.quiet()
    assert not off._due()
    empty = _runner(quiet_age_s=0.2)
    empty.quiet()
    assert not empty._due()  # nothing buffered: nothing to write
