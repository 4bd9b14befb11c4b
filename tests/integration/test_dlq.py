"""Dead letters: written with context, listed, shown, replayed once per source message."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from connectors.errors import TransientError
from connectors.kafka import client_config
from connectors.kafka.dlq import (
    ERROR_CLASS,
    REPLAYED_FROM,
    SOURCE_OFFSET,
    DeadLetterRefused,
    DeadLetters,
    Replayed,
    read_dead_letters,
    replay,
)
from connectors.kafka.topics import DLQ_MAX_MESSAGE_BYTES, TopicSpec, catalogue, dlq_topic, ensure_topics
from connectors.settings import load_settings
from infra.local.net import free_port
from tests.integration.topics import read_topics


def read(settings, topic, n):
    """The ``n`` messages ``topic`` holds (committed ones: a replay writes in transactions)."""
    got = read_topics(settings, [topic])
    assert len(got) == n, f"{topic} holds {len(got)} messages, expected {n}"
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
    for msg in read(settings, source, 3):
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
    assert any(line.split()[:4] == [dlq_topic(source), "3", "3", "BadMarker"] for line in listed.stdout.splitlines())
    shown = subprocess.run([*cli, "show", dlq_topic(source)], env=env, capture_output=True, text=True, timeout=120)
    assert shown.stdout.count("BadMarker: not Avro") == 3 and f"from {source}[" in shown.stdout

    assert replay(settings, dlq_topic(source)) == Replayed(3, 0)
    assert replay(settings, dlq_topic(source)) == Replayed(0, 0)  # already replayed: nothing twice
    again = read(settings, source, 6)
    replayed = [m for m in again if any(k == REPLAYED_FROM for k, _ in (m.headers() or []))]
    assert sorted(m.value() for m in replayed) == [b"garbage-0", b"garbage-1", b"garbage-2"]
    assert all(("h", b"v") in m.headers() for m in replayed)


def _env(settings, **extra):
    return {**os.environ, "EZ_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "EZ_TOPIC_PREFIX": settings.topic_prefix,
            "EZ_HOME": str(settings.home), **extra}


def _produce(settings, topic, values, **config):
    producer = Producer(client_config(settings, **config))
    for i, value in enumerate(values):
        producer.produce(topic, key=f"agent-{i}".encode(), value=value, headers=[("i", str(i).encode())])
    assert producer.flush(60) == 0


def _dead_letter_all(settings, source, n, processor="lake"):
    dead = DeadLetters(settings, processor)
    msgs = read(settings, source, n)
    for msg in msgs:
        assert dead.send(msg, "BadMarker", "not Avro")
    dead.flush(60)
    return dead, msgs


def _random(seed_name: str) -> random.Random:
    seed = random.SystemRandom().randrange(2**32)
    print(f"{seed_name}: seed {seed}")
    return random.Random(seed)


def test_large_letters_dead_letter_intact_and_topics_create_raises_an_old_dlq_limit(stack, stack_overrides, unique):
    settings = load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}."})
    source = f"t.{unique}.agent.tasks"
    dlq = dlq_topic(source)
    # A DLQ topic made before the larger limit: ensure_topics raises it, leaving the rest alone.
    ensure_topics(settings, [TopicSpec(source, 1, 1, {"max.message.bytes": "4000000"}),
                             TopicSpec(dlq, 2, 1, {"max.message.bytes": "1048588"})])
    spec = next(s for s in catalogue(settings) if s.name == dlq)
    assert ensure_topics(settings, [spec]) == {dlq: "raised"}
    assert ensure_topics(settings, [spec]) == {dlq: "exists"}
    admin = AdminClient(client_config(settings))
    configs = admin.describe_configs([ConfigResource(ResourceType.TOPIC, dlq)])
    assert next(iter(configs.values())).result()["max.message.bytes"].value == str(DLQ_MAX_MESSAGE_BYTES)

    rng = _random("large letters")
    values = [rng.randbytes(1_040_000), rng.randbytes(3_000_000)]  # random: lz4 cannot shrink them
    _produce(settings, source, values, **{"message.max.bytes": 4_000_000})
    _dead_letter_all(settings, source, 2)
    letters = read_dead_letters(settings, dlq, timeout_s=30)
    assert sorted(len(letter.value) for letter in letters) == [1_040_000, 3_000_000]
    assert sorted(letter.value for letter in letters) == sorted(values)
    assert all(letter.headers[ERROR_CLASS] == "BadMarker" for letter in letters)


def test_a_letter_too_large_for_its_dlq_is_refused_until_discarded(stack, stack_overrides, unique):
    settings = load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}."})
    source = f"t.{unique}.agent.tasks"
    ensure_topics(settings, [TopicSpec(source, 1, 1, {}),
                             TopicSpec(dlq_topic(source), 1, 1, {"max.message.bytes": "20000"})])
    rng = _random("refused letter")
    _produce(settings, source, [b"small-0", rng.randbytes(50_000), b"small-2"])
    dead = DeadLetters(settings, "lake")
    for msg in read(settings, source, 3):
        dead.send(msg, "BadMarker", "not Avro")
    for _ in range(2):  # raising forgets nothing: the second flush raises again
        with pytest.raises(DeadLetterRefused) as refused:
            dead.flush(30)
        assert refused.value.sources == [(source, 0, 1)]
        assert f"{source}[0]@1" in str(refused.value) and "MSG_SIZE_TOO_LARGE" in str(refused.value)
        assert dead.pending == [(source, 0, 1)]
    # The letters that shared the refused record batch were sent again alone and went.
    assert sorted(letter.value for letter in read_dead_letters(settings, dlq_topic(source))) == [b"small-0", b"small-2"]
    assert dead.discard(source, 0) == [(source, 0, 1)]
    dead.flush(30)


def test_an_unreachable_broker_is_transient_then_refused_past_the_bound(stack_overrides):
    # A port nothing listens on: every delivery times out; the session's broker is not touched.
    settings = load_settings(**{**stack_overrides, "kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    dead = DeadLetters(settings, "lake", max_attempts=2, **{"message.timeout.ms": 1000})

    class Msg:
        def topic(self): return "t.unreachable.agent.tasks"
        def partition(self): return 0
        def offset(self): return 9
        def key(self): return None
        def value(self): return b"bad"
        def headers(self): return None
        def timestamp(self): return (0, 0)

    dead.send(Msg(), "BadMarker", "not Avro")
    with pytest.raises(TransientError) as transient:
        dead.flush(10)
    assert not isinstance(transient.value, DeadLetterRefused)
    assert "t.unreachable.agent.tasks[0]@9" in str(transient.value)
    assert dead.pending == [("t.unreachable.agent.tasks", 0, 9)]
    with pytest.raises(DeadLetterRefused) as refused:
        dead.flush(10)  # sent again, timed out again: the bound
    assert refused.value.sources == [("t.unreachable.agent.tasks", 0, 9)] and "_MSG_TIMED_OUT" in str(refused.value)
    dead.close()  # no reconnecting to the closed port for the rest of the session


def test_a_source_dead_lettered_twice_is_replayed_once(stack, stack_overrides, unique):
    settings = load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}."})
    source = f"t.{unique}.agent.tasks"
    ensure_topics(settings, [TopicSpec(source, 2, 1, {}), TopicSpec(dlq_topic(source), 2, 1, {})])
    _produce(settings, source, [f"bad-{i}".encode() for i in range(3)])
    dead, msgs = _dead_letter_all(settings, source, 3)
    assert not dead.send(msgs[0], "BadMarker", "again")  # the same process writes a source once
    _dead_letter_all(settings, source, 3, processor="lake")  # a restarted worker writes them again

    env = _env(settings)
    cli = [sys.executable, "-m", "streams.cli", "dlq"]
    listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, timeout=120)
    assert any(line.split()[:4] == [dlq_topic(source), "6", "3", "BadMarker"] for line in listed.stdout.splitlines()), \
        listed.stdout + listed.stderr
    shown = subprocess.run([*cli, "show", dlq_topic(source)], env=env, capture_output=True, text=True, timeout=120)
    assert shown.stdout.count("DUPLICATE of") == 3, shown.stdout

    assert replay(settings, dlq_topic(source)) == Replayed(3, 3)
    assert replay(settings, dlq_topic(source)) == Replayed(0, 0)
    replayed = Counter(l.value for l in read_dead_letters(settings, source) if REPLAYED_FROM in l.headers)
    assert replayed == {f"bad-{i}".encode(): 1 for i in range(3)}


def test_a_replay_killed_midway_then_run_again_replays_each_source_once(stack, stack_overrides, unique):
    settings = load_settings(**{**stack_overrides, "topic_prefix": f"t.{unique}."})
    source = f"t.{unique}.agent.tasks"
    dlq = dlq_topic(source)
    ensure_topics(settings, [TopicSpec(source, 2, 1, {}), TopicSpec(dlq, 1, 1, {})])
    _produce(settings, source, [f"bad-{i}".encode() for i in range(12)])
    msgs = read(settings, source, 12)
    # 16 letters, 12 sources, 2 chunks of 8: the second holds 4 repeats (a restarted worker's) and 4 new.
    for sent in (msgs[:8], msgs[4:]):
        dead = DeadLetters(settings, "lake")
        for msg in sent:
            dead.send(msg, "BadMarker", "not Avro")
        dead.flush(60)

    cli = [sys.executable, "-m", "streams.cli", "dlq", "replay", dlq, "--chunk", "8"]
    runs = [subprocess.run(cli, env=_env(settings, EZ_FAILPOINTS=failpoint), capture_output=True, text=True,
                           timeout=120)
            for failpoint in ("dlq.replay.after_chunk=1",    # killed once the first chunk is committed
                              "dlq.replay.before_commit=1",  # killed with the second chunk sent, not committed
                              "")]
    assert [r.returncode for r in runs] == [-9, -9, 0], [r.stderr for r in runs]
    assert "replayed 4 dead letter(s), skipped 4 duplicate(s)" in runs[2].stdout, runs[2].stdout
    again = subprocess.run(cli, env=_env(settings), capture_output=True, text=True, timeout=120)
    assert "replayed 0 dead letter(s), skipped 0 duplicate(s)" in again.stdout, again.stdout + again.stderr

    replayed = Counter(l.value for l in read_dead_letters(settings, source) if REPLAYED_FROM in l.headers)
    assert replayed == {f"bad-{i}".encode(): 1 for i in range(12)}
