"""How the sink loop buffers a fetched run of one partition (streams/sinks/runner.py)."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from connectors.sink import OffsetRange
from streams.sinks.runner import SinkRunner, _check_offsets, _PartitionBuffer


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
