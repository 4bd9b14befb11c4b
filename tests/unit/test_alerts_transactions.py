"""When the alerts role opens its transactions (streams/intelligence/processor.py), against a
producer that records the calls: the timing of the real ones is the integration tests' and
bench/alerts.py's."""

from __future__ import annotations

import time
from concurrent.futures import Future

import pytest

from connectors.kafka.codec import default_codec
from connectors.settings import load_settings
from streams.intelligence.config import IntelligenceConfig
from streams.intelligence.processor import (
    BEGIN_AFTER_COMMIT_S,
    BEGIN_KEY,
    Rules,
    ShardProcessor,
    _Cut,
    state_topic,
)


class _Producer:
    """The transactional producer's calls the role makes, recorded."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None, partition: int = -1) -> None:
        self.calls.append((topic, key))

    def poll(self, timeout: float) -> int:
        return 0

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")


@pytest.fixture
def processor():
    settings = load_settings(topic_prefix="txn-timing")
    processor = ShardProcessor(settings, IntelligenceConfig(), default_codec())
    processor.rules = Rules(processor.config)
    processor._txn = _Producer()
    processor._caught_up = True
    return processor


def test_a_quiet_step_opens_its_transaction_only_once_the_coordinator_is_done_with_the_last(processor):
    producer, state = processor._txn, state_topic(processor.settings)
    processor._dirty = True
    processor._commit_ended = time.monotonic()
    assert not processor._commit_due() and producer.calls == [] and not processor._in_txn
    processor._commit_ended -= BEGIN_AFTER_COMMIT_S
    assert not processor._commit_due()  # begun; the commit interval runs from now
    assert producer.calls == ["begin", (state, BEGIN_KEY)] and processor._in_txn


def test_an_output_right_after_a_commit_opens_the_transaction_at_once(processor):
    producer, state = processor._txn, state_topic(processor.settings)
    processor._commit_ended = time.monotonic()
    processor._produce(processor._alerts_topic, "agent-1", b"alert")
    assert producer.calls == ["begin", (state, BEGIN_KEY), (processor._alerts_topic, b"agent-1")]


def test_the_commit_thread_reports_when_the_commit_ended_and_the_loop_keeps_it(processor):
    before = time.monotonic()
    cut = processor._finish(_Cut(1, 1, None, {}, []))
    assert processor._txn.calls == ["commit"] and before <= cut.ended <= time.monotonic()
    processor._committing = future = Future()
    future.set_result(cut)
    processor._settle()
    assert processor._committing is None and processor._commit_ended == cut.ended
