"""Kafka transactions where Kafka is both source and sink: a step's outputs and the offsets it
consumed, committed together (the span mapper, the inference worker).

A step that fails between ``begin_transaction`` and the commit leaves outputs no
``read_committed`` reader sees; the broker aborts them, or :func:`commit_step` does when the
transaction must be aborted, and the partitions' next owner reads again from the committed offsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from connectors.errors import TransientError
from connectors.failpoints import failpoint


def produce_waiting(producer: Any, topic: str, value: bytes | None, key: bytes | None = None,
                    headers: list[tuple[str, bytes]] | None = None) -> None:
    """Produce one message, serving the producer's queue while it is full."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers)
            return
        except BufferError:
            producer.poll(0.01)


def commit_step(producer: Any, consumer: Any, source: str, offsets: Mapping[int, int],
                outputs: Iterable[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]],
                *, what: str, failpoint_name: str) -> None:
    """Produce ``outputs`` (topic, key, value, headers) and commit them with ``offsets`` (partition
    of ``source`` -> the next offset to read) in one transaction.

    :raises TransientError: the transaction had to be aborted (its outputs are never read); the
        caller starts again from the committed offsets.
    """
    from confluent_kafka import KafkaException, TopicPartition

    try:
        producer.begin_transaction()
        for topic, key, value, headers in outputs:
            produce_waiting(producer, topic, value, key, headers)
        failpoint(failpoint_name)
        producer.send_offsets_to_transaction(
            [TopicPartition(source, p, o) for p, o in offsets.items()], consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
    except KafkaException as exc:
        error = exc.args[0]
        if error.txn_requires_abort():
            producer.abort_transaction(30)
            raise TransientError(f"{what} transaction aborted: {error.str()}") from None
        raise
