"""DeadLetters keeps every letter until acknowledged, classifies refusals, writes a source once.

The producer is a fake that answers as librdkafka would; no broker is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError, KafkaException

from connectors.errors import TerminalError, TransientError
from connectors.kafka import dlq as dlq_module
from connectors.kafka.dlq import SOURCE_OFFSET, DeadLetterRefused, DeadLetters
from connectors.kafka.topics import DLQ_MAX_MESSAGE_BYTES, catalogue
from connectors.settings import load_settings


@dataclass
class Msg:
    """The part of a confluent-kafka Message that DeadLetters reads."""

    topic_: str
    partition_: int
    offset_: int
    value_: bytes = b"bad"

    def topic(self): return self.topic_
    def partition(self): return self.partition_
    def offset(self): return self.offset_
    def key(self): return b"k"
    def value(self): return self.value_
    def headers(self): return [("h", b"v")]
    def timestamp(self): return (1, 1_700_000_000_000)


@dataclass
class FakeProducer:
    """Queues produce calls; ``answer(value, alone)`` decides each delivery (None: delivered)."""

    config: dict
    answer: object = None
    queue: list = field(default_factory=list)
    produced: list = field(default_factory=list)

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        if len(value or b"") > self.config["message.max.bytes"]:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.queue.append((topic, value, dict(headers), on_delivery))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=0):
        queue, self.queue = self.queue, []
        for topic, value, headers, report in queue:
            code = self.answer(value, len(queue) == 1) if self.answer else None
            if code is None:
                self.produced.append((topic, value, headers))
            report(None if code is None else KafkaError(code), None)
        return 0

    def purge(self):
        self.queue.clear()

    def close(self):
        self.closed = True

    def __len__(self):
        return len(self.queue)


FAKE: FakeProducer


@pytest.fixture
def dead(monkeypatch):
    def make(config):
        global FAKE
        FAKE = FakeProducer(config)
        return FAKE

    monkeypatch.setattr("confluent_kafka.Producer", make)
    return DeadLetters(load_settings(), "lake", max_attempts=3, remember=10)


def test_dlq_topics_take_larger_messages_than_the_producer_limit_of_the_dead_letters(dead):
    dlq_specs = [s for s in catalogue(load_settings()) if s.name.endswith(".dlq")]
    assert dlq_specs and all(s.config["max.message.bytes"] == str(DLQ_MAX_MESSAGE_BYTES) for s in dlq_specs)
    assert FAKE.config["message.max.bytes"] == DLQ_MAX_MESSAGE_BYTES


def test_a_source_is_written_once_per_process(dead):
    assert dead.send(Msg("t", 0, 5), "E", "bad")
    assert not dead.send(Msg("t", 0, 5), "E", "bad")  # pending
    dead.flush()
    assert not dead.send(Msg("t", 0, 5), "E", "bad")  # delivered
    assert dead.send(Msg("t", 1, 5), "E", "bad")  # another partition, another source
    dead.flush()
    assert [h[SOURCE_OFFSET] for _, _, h in FAKE.produced] == [b"5", b"5"]
    assert dict(dead.sent) == {"t.dlq": 2}
    dead.forget_below("t", 0, 6)
    assert dead.send(Msg("t", 0, 5), "E", "bad")  # forgotten: written again


def test_remembered_sources_are_bounded(dead):
    for offset in range(25):
        dead.send(Msg("t", 0, offset), "E", "bad")
        dead.flush()
    assert len(dead._delivered[("t", 0)]) <= 10
    assert not dead.send(Msg("t", 0, 24), "E", "bad")  # the newest are the ones kept


def test_a_letter_too_large_for_the_producer_is_refused_at_flush_not_at_send(dead):
    big = Msg("t", 2, 7, b"x" * (DLQ_MAX_MESSAGE_BYTES + 1))
    assert dead.send(big, "E", "bad")  # no exception here
    dead.send(Msg("t", 0, 1), "E", "bad")
    with pytest.raises(DeadLetterRefused) as refused:
        dead.flush()
    assert isinstance(refused.value, TerminalError)
    assert refused.value.sources == [("t", 2, 7)]
    assert "t[2]@7" in str(refused.value) and "MSG_SIZE_TOO_LARGE" in str(refused.value)
    assert [h[SOURCE_OFFSET] for _, _, h in FAKE.produced] == [b"1"]  # the other letter went
    with pytest.raises(DeadLetterRefused):
        dead.flush()  # still refused: raising forgets nothing
    assert dead.discard("t", 2) == [("t", 2, 7)]
    dead.flush()
    assert dead.pending == []


def test_a_batch_refused_for_its_size_is_retried_letter_by_letter(dead):
    # The broker refuses a record batch over the topic's limit: every letter in it fails.
    FAKE.answer = lambda value, alone: KafkaError.MSG_SIZE_TOO_LARGE if (len(value) > 100 or not alone) else None
    for offset, size in enumerate([10, 500, 10]):
        dead.send(Msg("t", 0, offset, b"x" * size), "E", "bad")
    with pytest.raises(DeadLetterRefused) as refused:
        dead.flush()
    assert refused.value.sources == [("t", 0, 1)]
    assert sorted(h[SOURCE_OFFSET] for _, _, h in FAKE.produced) == [b"0", b"2"]


def test_a_failure_that_can_pass_is_sent_again_then_refused_past_the_bound(dead):
    FAKE.answer = lambda value, alone: KafkaError._MSG_TIMED_OUT
    dead.send(Msg("t", 0, 1), "E", "bad")
    for _ in range(2):
        with pytest.raises(TransientError) as transient:
            dead.flush()
        assert not isinstance(transient.value, TerminalError) and "t[0]@1" in str(transient.value)
        assert dead.pending == [("t", 0, 1)]
    with pytest.raises(DeadLetterRefused) as refused:
        dead.flush()  # the 3rd failed delivery: max_attempts
    assert refused.value.sources == [("t", 0, 1)]


def test_a_failure_that_passed_delivers_the_letter(dead):
    answers = [KafkaError.NOT_ENOUGH_REPLICAS, None]
    FAKE.answer = lambda value, alone: answers.pop(0)
    dead.send(Msg("t", 0, 1), "E", "bad")
    with pytest.raises(TransientError):
        dead.flush()
    dead.flush()
    assert dead.pending == [] and len(FAKE.produced) == 1


def test_a_fatal_producer_is_replaced_and_its_letters_sent_again(dead, monkeypatch):
    first = FAKE
    first.answer = lambda value, alone: KafkaError._FATAL
    dead.send(Msg("t", 0, 1), "E", "bad")
    with pytest.raises(TransientError):
        dead.flush()
    dead.flush()
    assert FAKE is not first and len(FAKE.produced) == 1 and dead.pending == []


def test_refused_error_names_every_source_briefly():
    errors = {("t", 0, i): "to t.dlq, 1 bytes: MSG_SIZE_TOO_LARGE: too large" for i in range(8)}
    message = str(DeadLetterRefused(errors))
    assert "8 dead letter(s)" in message and "t[0]@4" in message and "and 3 more" in message
    assert dlq_module.DLQ_MAX_MESSAGE_BYTES == DLQ_MAX_MESSAGE_BYTES


def test_close_releases_the_producer_and_gives_up_pending_letters(dead):
    dead.send(Msg("t", 0, 1), "E", "bad")
    dead.close()
    assert FAKE.closed and FAKE.produced == [] and dead.pending == []
