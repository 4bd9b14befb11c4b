"""Dead letters: written with context, listed, shown, replayed once."""

from __future__ import annotations

import os
import subprocess
import sys

from confluent_kafka import Consumer, Producer

from connectors.kafka import client_config
from connectors.kafka.dlq import (
    ERROR_CLASS,
    REPLAYED_FROM,
    SOURCE_OFFSET,
    DeadLetters,
    read_dead_letters,
    replay,
)
from connectors.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from connectors.settings import load_settings
from tests.conftest import wait_for


def read(settings, topic, group, n):
    consumer = Consumer(client_config(settings, **{"group.id": group, "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    got = []
    try:
        wait_for(lambda: got.extend(m for m in consumer.consume(100, timeout=0.5) if m.error() is None)
                 or len(got) >= n, 60, f"{n} messages on {topic}", interval_s=0)
    finally:
        consumer.close()
    return got


def test_dead_letters_list_show_and_replay_once(stack, stack_overrides, unique):
    settings = load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}."})
    source = f"t.{unique}.agent.tasks"
    ensure_topics(settings, [TopicSpec(source, 2, 1, {}), TopicSpec(dlq_topic(source), 2, 1, {})])
    producer = Producer(client_config(settings))
    for i in range(3):
        producer.produce(source, key=f"agent-{i}".encode(), value=f"garbage-{i}".encode(), headers=[("h", b"v")])
    assert producer.flush(30) == 0

    dead = DeadLetters(settings, "lake")
    for msg in read(settings, source, f"g1.{unique}", 3):
        dead.send(msg, "BadMarker", f"not Avro: {msg.value()!r}")
    dead.flush()

    letters = read_dead_letters(settings, dlq_topic(source))
    assert sorted(l.value for l in letters) == [b"garbage-0", b"garbage-1", b"garbage-2"]
    assert all(l.headers[ERROR_CLASS] == "BadMarker" and l.original_headers == [("h", b"v")] for l in letters)
    assert len({l.source for l in letters}) == 3  # each source message once
    assert all(l.headers[SOURCE_OFFSET].isdigit() for l in letters)

    env = {**os.environ, "EZ_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "EZ_TOPIC_PREFIX": settings.topic_prefix,
           "EZ_HOME": str(settings.home)}
    cli = [sys.executable, "-m", "streams.cli", "dlq"]
    listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:3] == [dlq_topic(source), "3", "BadMarker"] for line in listed.stdout.splitlines())
    shown = subprocess.run([*cli, "show", dlq_topic(source)], env=env, capture_output=True, text=True, timeout=120)
    assert shown.stdout.count("BadMarker: not Avro") == 3 and f"from {source}[" in shown.stdout

    assert replay(settings, dlq_topic(source)) == 3
    assert replay(settings, dlq_topic(source)) == 0  # already replayed: nothing twice
    again = read(settings, source, f"g2.{unique}", 6)
    replayed = [m for m in again if any(k == REPLAYED_FROM for k, _ in (m.headers() or []))]
    assert sorted(m.value() for m in replayed) == [b"garbage-0", b"garbage-1", b"garbage-2"]
    assert all(("h", b"v") in m.headers() for m in replayed)
