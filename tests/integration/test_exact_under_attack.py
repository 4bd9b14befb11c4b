"""Exactness under hostile input and unlucky timing, attacked with real Kafka and chDB.

Each test reproduces one way the pipeline used to lose, duplicate or stick (issue 12), and
checks exact counts and cost sums in the lake, ClickHouse and the DLQ.
"""

from __future__ import annotations

import math
import random
import re
import uuid
from datetime import datetime, timedelta, timezone

from confluent_kafka import Consumer, Producer

from connectors.kafka import client_config
from connectors.kafka.codec import MARKER, default_codec
from connectors.kafka.dlq import (
    ERROR_CLASS,
    ERROR_MESSAGE,
    REPLAYED_FROM,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    read_dead_letters,
    replay,
)
from connectors.kafka.topics import dlq_topic, topic_name
from streams.sinks.feed import shared_group
from tests.conftest import wait_for
from tests.integration.topics import read_topics
from tests.integration.pipeline import Truth, clickhouse_totals, expected, lake_totals, produce_simulated, wait_exact

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _call(**changes) -> dict:
    record = dict(event_id=str(uuid.uuid4()), event_time=NOW - timedelta(minutes=5), agent_id="attacker-01",
                  agent_type="development", tenant_id="acme", trace_id="t-attack", call_id=uuid.uuid4().hex,
                  task_id=None, provider="openai", model="gpt-4o", api_key_alias="key-1", input_tokens=10,
                  output_tokens=20, cost_usd=0.25, price_version="p1", latency_ms=120.0, status="ok",
                  cache_hit=False, region=None, prompt_snippet=None, output_snippet=None)
    return {**record, **changes}


def _produce(settings, topic: str, values: list[bytes], key: bytes = b"attacker-01") -> list[tuple[str, int, int]]:
    """Produce ``values`` as they are (any bytes, up to 2 MB) to catalogue ``topic``; their positions."""
    producer = Producer(client_config(settings, **{"message.max.bytes": 2_000_000, "enable.idempotence": True}))
    positions: list[tuple[str, int, int]] = []
    errors: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(err.str())
        else:
            positions.append((msg.topic(), msg.partition(), msg.offset()))

    for value in values:
        producer.produce(topic_name(settings, topic), key=key, value=value, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors
    return positions


def _letters(settings, topics: list[str]) -> list:
    return [l for t in topics for l in read_dead_letters(settings, dlq_topic(topic_name(settings, t)))]


def _wait_clickhouse_exact(settings, truth: Truth, worker, timeout_s: float) -> None:
    """Wait until ClickHouse (a clickhouse-only worker's) holds exactly what was produced."""
    want = expected(truth)
    state = {}

    def exact() -> bool:
        worker.alive()
        state["clickhouse"] = clickhouse_totals(settings, worker)
        return state["clickhouse"] == want

    try:
        wait_for(exact, timeout_s, "ClickHouse to hold every event once", interval_s=1.0)
    except AssertionError:
        raise AssertionError(f"want {want}\nclickhouse {state.get('clickhouse')}") from None


def test_values_no_store_can_hold_go_to_the_dlq_once_and_the_rest_stays_exact(pipe, workers):
    truth = Truth()
    worker = workers(pipe)
    produce_simulated(pipe, 1500, seed=31, truth=truth)
    codec = default_codec()
    hostile = {
        "event time 1e16 ms": _call(event_time=10**16),
        "year 2200": _call(event_time=datetime(2200, 1, 1, tzinfo=timezone.utc)),
        "year 2286": _call(event_time=datetime(2286, 6, 1, tzinfo=timezone.utc)),
        "year 1969": _call(event_time=datetime(1969, 12, 31, 23, tzinfo=timezone.utc)),
        "1970, long past the retention": _call(event_time=datetime(1970, 1, 2, tzinfo=timezone.utc)),
        "400 days old": _call(event_time=NOW - timedelta(days=400)),
        "two hours ahead": _call(event_time=NOW + timedelta(hours=2)),
        "NaN cost": _call(cost_usd=math.nan),
        "infinite latency": _call(latency_ms=math.inf),
        "negative cost": _call(cost_usd=-3.0),
        "negative tokens": _call(input_tokens=-5),
        "megabyte agent id": _call(agent_id="a" * 1_000_000),
    }
    values = [codec.encode("llm_call", r) for r in hostile.values()]
    # Malformed and as large as the broker takes: it must fit in the DLQ too.
    garbage = MARKER + random.Random(7).randbytes(1_040_000)
    bad = _produce(pipe, "agent.llm_calls", values + [garbage])
    bad += _produce(pipe, "agent.telemetry", [codec.encode("telemetry", dict(
        event_id=str(uuid.uuid4()), event_time=NOW, agent_id="attacker-01", agent_type="development",
        tenant_id="acme", trace_id="t", cpu_percent=math.nan, memory_percent=1.0, memory_mb=1.0,
        response_time_ms=1.0, error_count=0, queue_depth=0, region=None))])
    produce_simulated(pipe, 1500, seed=32, truth=truth)

    wait_exact(pipe, truth, workers=[worker])
    letters = wait_for(lambda: (found if len(found := _letters(pipe, ["agent.llm_calls", "agent.telemetry"]))
                                >= len(bad) else None), 60, "the dead letters")
    sources = {(l.headers[SOURCE_TOPIC], int(l.headers[SOURCE_PARTITION]), int(l.headers[SOURCE_OFFSET])): l
               for l in letters}
    assert len(letters) == len(sources) == len(bad) and set(sources) == set(bad)
    classes = [sources[p].headers[ERROR_CLASS] for p in bad]
    assert classes == ["InvalidValue"] * len(hostile) + ["UnknownSchema", "InvalidValue"]
    messages = [sources[p].headers[ERROR_MESSAGE] for p in bad]
    assert "outside the range the stores hold" in messages[0] and "older than the retention" in messages[4]
    assert "EZ_EVENT_TIME_FUTURE_TOLERANCE_S" in messages[6] and "cost_usd nan" in messages[7]
    assert "EZ_MAX_STRING_BYTES" in messages[11] and "cpu_percent nan" in messages[13]
    assert sources[bad[12]].value == garbage  # the 1 MB letter is whole
    worker.alive()  # no crash on the way


def test_a_batch_spanning_150_months_reaches_clickhouse(pipe, workers):
    # A backfill of history: the retention covers it, so both stores must hold all of it.
    settings = pipe.model_copy(update={"lake_retention_days": 10_000, "clickhouse_ttl_days": 10_000})
    truth = Truth()
    worker = workers(settings)
    produce_simulated(settings, 1000, seed=33, truth=truth)
    codec = default_codec()
    months = [datetime(2000 + m // 12, m % 12 + 1, 15, tzinfo=timezone.utc) for m in range(150)]
    # One agent: one partition, one batch holding 150 months.
    _produce(settings, "agent.llm_calls", [codec.encode("llm_call", _call(event_time=t, cost_usd=0.5)) for t in months])
    for _ in months:
        truth.add("llm_calls", 0.5)
    produce_simulated(settings, 1000, seed=34, truth=truth)
    wait_exact(settings, truth, workers=[worker])
    assert _letters(settings, ["agent.llm_calls"]) == []


def test_a_stop_halfway_through_a_replay_leaves_it_to_the_next_start(pipe, workers):
    settings = pipe.model_copy(update={"clickhouse_flush_rows": 30_000, "clickhouse_flush_seconds": 120.0})
    truth = Truth()
    codec = default_codec()
    # One agent, one partition: the first batch holds 30,000 of its offsets, more than one fetch
    # (10,000 messages) returns, so rebuilding it takes several fetches.
    calls = [_call(event_time=NOW - timedelta(seconds=i), cost_usd=round(0.001 * (i % 97), 3)) for i in range(40_000)]
    _produce(settings, "agent.llm_calls", [codec.encode("llm_call", c) for c in calls])
    for c in calls:
        truth.add("llm_calls", c["cost_usd"])
    # Killed with the first batch recorded but not inserted: a restart must rebuild all of it.
    crashed = workers(settings, roles="clickhouse", name="crashed", failpoints="clickhouse.after_record=1")
    wait_for(crashed.exited, 180, "the kill -9 after the batch was recorded")
    # Stopped (SIGTERM, as in a rolling restart) once it read only part of that batch again.
    stopped = workers(settings, roles="clickhouse", name="stopped", failpoints="clickhouse.replay_partial=1:term")
    wait_for(stopped.exited, 180, "the stop halfway through the replay")
    assert "leaving the replay of offsets" in stopped.log.read_text(), stopped.tail()
    final = workers(settings, roles="clickhouse", name="final")
    _wait_clickhouse_exact(settings, truth, final, timeout_s=240)


def test_a_partition_assigned_again_during_a_retry_is_not_written_twice(pipe, workers):
    truth = Truth()
    produce_simulated(pipe, 3000, seed=36, truth=truth)
    # The store fails the first batches' records for a while (about 20 s of back-off)…
    worker = workers(pipe, failpoints="clickhouse.before_record=1:fail*12")
    wait_for(lambda: "retrying in" in worker.log.read_text(), 60, "the sink retrying")
    # …and meanwhile another member joins the group (the worker's one consumer for both sinks)
    # and leaves: every partition goes away and comes back to the same worker, in a new assignment.
    probe = Consumer(client_config(pipe, **{"group.id": shared_group(pipe),
                                            "enable.auto.commit": False, "session.timeout.ms": 10_000}))
    assigned = []
    probe.subscribe([topic_name(pipe, t) for t in ("agent.tasks", "agent.llm_calls", "agent.telemetry")],
                    on_assign=lambda c, parts: assigned.append(len(parts)))

    def probe_assigned() -> bool:
        probe.poll(0.2)
        return bool(assigned)

    try:
        wait_for(probe_assigned, 60, "the probe's assignment", interval_s=0)
    finally:
        probe.close()
    wait_exact(pipe, truth, workers=[worker])
    log = worker.log.read_text()
    last_assigned = log.rindex("clickhouse: assigned")
    assert "retrying in" in log[last_assigned:], "the partitions came back after the retries: nothing was tested"
    # Stays exact once every write went through.
    produce_simulated(pipe, 500, seed=37, truth=truth)
    wait_exact(pipe, truth, workers=[worker])
    assert lake_totals(pipe) == expected(truth)


def test_a_recorded_batch_is_written_whole_by_a_worker_resuming_part_of_it(pipe, workers):
    truth = Truth()
    produce_simulated(pipe, 3000, seed=39, truth=truth)
    # Killed with the first batch (every partition of its topic) recorded but not inserted.
    crashed = workers(pipe, roles="clickhouse", name="crashed", failpoints="clickhouse.after_record=1")
    wait_for(crashed.exited, 120, "the kill -9 after the first batch was recorded")
    # Another member of the group holds part of the partitions when the worker resumes: the
    # worker must still write the whole recorded batch, the other member's ranges included.
    topics = [topic_name(pipe, t) for t in ("agent.tasks", "agent.llm_calls", "agent.telemetry")]
    member = Consumer(client_config(pipe, **{"group.id": f"{pipe.topic_prefix}ezstream.clickhouse",
                                             "enable.auto.commit": False, "session.timeout.ms": 10_000}))
    held: list[list[tuple[str, int]]] = []
    member.subscribe(topics, on_assign=lambda c, parts: held.append([(tp.topic, tp.partition) for tp in parts]),
                     on_revoke=lambda c, parts: held.append([]))
    try:
        wait_for(lambda: member.poll(0.2) is None and held and held[-1], 60, "the other member's assignment",
                 interval_s=0)
        worker = workers(pipe, roles="clickhouse", name="resumed")

        def rewritten() -> bool:
            member.poll(0.2)
            return "wrote the recorded batch" in worker.log.read_text()

        wait_for(rewritten, 120, "the worker writing the recorded batch again", interval_s=0)
        log = worker.log.read_text()
        assert held[-1], "the other member held no partition while the batch was written: nothing was tested"
        replayed = re.search(r"wrote the recorded batch (\S+)\[([^\]]+)\]", log)
        batch_partitions = {(replayed[1], int(span.split("@")[0])) for span in replayed[2].split(",")}
        assert batch_partitions & set(held[-1]), (batch_partitions, held[-1])  # some were the other member's
    finally:
        member.close()
    _wait_clickhouse_exact(pipe, truth, worker, timeout_s=180)


def test_dead_letters_a_crash_repeated_are_replayed_once(pipe, workers):
    truth = Truth()
    # Killed after the dead letters are durable, before the lake recorded the batch: the restart
    # reads the batch again and dead-letters its garbage a second time (at least once on write).
    crashed = workers(pipe, name="crashed", failpoints="lake.before_write=1")
    # Garbage first, on one partition: the first batch of that partition holds it.
    bad = _produce(pipe, "agent.tasks", [b"not avro %d" % i for i in range(50)], key=b"research-02")
    produce_simulated(pipe, 1500, seed=38, truth=truth)
    wait_for(crashed.exited, 120, "the kill -9 before the lake's write")
    worker = workers(pipe, name="after")
    wait_exact(pipe, truth, workers=[worker])
    dlq = dlq_topic(topic_name(pipe, "agent.tasks"))
    letters = wait_for(lambda: (found if len(found := read_dead_letters(pipe, dlq)) > len(bad) else None), 60,
                       "the repeated dead letters")
    assert {l.source_key for l in letters} == set(bad)
    worker.stop()  # the replayed garbage is not dead-lettered again while replay runs

    # Exactly once on replay: each source once, a rerun sends nothing.
    first = replay(pipe, dlq)
    assert (first.sent, first.duplicates) == (len(bad), len(letters) - len(bad))
    again = replay(pipe, dlq)
    assert again.sent == 0
    replayed = _replayed_values(pipe, topic_name(pipe, "agent.tasks"))
    assert sorted(replayed) == sorted(b"not avro %d" % i for i in range(50))


def _replayed_values(settings, topic: str) -> list[bytes]:
    """Values of the messages of ``topic`` that a DLQ replay sent (committed ones only)."""
    return [msg.value() for msg in read_topics(settings, [topic], **{"isolation.level": "read_committed"})
            if any(name == REPLAYED_FROM for name, _ in msg.headers() or [])]
