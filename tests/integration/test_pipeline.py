"""The pipeline end to end with real Kafka, MinIO and chDB: exactly once, whatever happens.

Each test runs its own worker processes on its own topics (``EZ_TOPIC_PREFIX``), lake folder and
ClickHouse folder, and compares counts, sums of cost and distinct Kafka positions per table in
Kafka (what was produced), the lake and ClickHouse.
"""

from __future__ import annotations

import io
import threading
import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from fastavro import schemaless_writer

from connectors.kafka import client_config
from connectors.kafka.codec import MARKER, encode
from connectors.kafka.dlq import ERROR_CLASS, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC, read_dead_letters
from connectors.kafka.events import Telemetry
from connectors.kafka.schemas import default_registry
from connectors.kafka.topics import catalogue, dlq_topic, ensure_topics, topic_name
from connectors.settings import load_settings
from infra.local.minio import MinioServer
from infra.local.net import free_port
from tests.conftest import wait_for
from tests.integration.pipeline import (
    Truth,
    lake_totals,
    produce_simulated,
    wait_exact,
)


def test_valid_events_land_exactly_once_in_lake_and_clickhouse(pipe, workers):
    truth = Truth()
    worker = workers(pipe)
    produce_simulated(pipe, 6000, seed=1, truth=truth)
    wait_exact(pipe, truth, workers=[worker])
    assert set(truth.count) == {"task_events", "llm_calls", "telemetry"}


def _bad_messages(pipe) -> list[tuple[str, bytes, str]]:
    """(catalogue topic, bytes, expected error class) of malformed and schema-invalid messages."""
    registry = default_registry()
    telemetry = Telemetry(agent_id="research-01", agent_type="research", tenant_id="acme", trace_id="t",
                          cpu_percent=1.0, memory_percent=2.0, memory_mb=3.0, response_time_ms=4.0,
                          error_count=0, queue_depth=0)
    good_telemetry = encode("telemetry", telemetry.to_record())
    writer = registry.current("telemetry")
    body = io.BytesIO()
    schemaless_writer(body, writer.parsed, {**telemetry.to_record(), "event_id": "not-a-uuid"})
    return [
        ("agent.tasks", b"plain garbage, not Avro", "BadMarker"),
        ("agent.tasks", MARKER + b"\x00" * 8 + b"\x02\x04", "UnknownSchema"),
        ("agent.telemetry", good_telemetry[:-7], "UndecodableBody"),
        ("agent.llm_calls", good_telemetry, "WrongEventType"),
        ("agent.telemetry", MARKER + writer.fingerprint + body.getvalue(), None),
        ("agent.telemetry", b"", "BadMarker"),
    ]


def test_malformed_and_invalid_messages_go_to_the_dlq_and_the_rest_is_exact(pipe, workers):
    truth = Truth()
    worker = workers(pipe)
    produce_simulated(pipe, 1500, seed=2, truth=truth)
    bad = _bad_messages(pipe)
    raw = Producer(client_config(pipe))
    sent: list[tuple[str, int, int, str | None]] = []
    for topic, value, error in bad:
        raw.produce(topic_name(pipe, topic), key=b"research-01", value=value,
                    headers=[("origin", b"test")],
                    on_delivery=lambda err, msg, e=error: sent.append((msg.topic(), msg.partition(), msg.offset(), e)))
    assert raw.flush(30) == 0
    produce_simulated(pipe, 1500, seed=3, truth=truth)

    wait_exact(pipe, truth, workers=[worker])
    letters = []
    for topic in {t for t, _, _ in bad}:
        dlq = dlq_topic(topic_name(pipe, topic))
        letters += wait_for(lambda d=dlq, n=sum(1 for t, _, _ in bad if t == topic): (
            found if len(found := read_dead_letters(pipe, d)) >= n else None), 60, f"dead letters on {dlq}")
    got = {(l.headers[SOURCE_TOPIC], int(l.headers[SOURCE_PARTITION]), int(l.headers[SOURCE_OFFSET])): l
           for l in letters}
    assert len(letters) == len(bad) == len(got)  # each exactly once
    for topic, partition, offset, error in sent:
        letter = got[(topic, partition, offset)]
        if error is not None:
            assert letter.headers[ERROR_CLASS] == error
        assert letter.original_headers == [("origin", b"test")]
        assert letter.key == b"research-01"
        assert letter.headers["ez.dlq.error.message"]


def test_replaying_the_topics_from_offset_zero_adds_no_duplicate(pipe, workers):
    truth = Truth()
    worker = workers(pipe)
    produce_simulated(pipe, 3000, seed=4, truth=truth)
    wait_exact(pipe, truth, workers=[worker])
    worker.stop()

    # Forget every committed group offset: the sinks' own records must decide where to resume.
    admin = AdminClient(client_config(pipe))
    groups = [f"{pipe.topic_prefix}ezstream.{role}" for role in ("lake", "clickhouse")]
    for future in admin.delete_consumer_groups(groups, request_timeout=30).values():
        future.result()
    worker = workers(pipe, name="again")
    produce_simulated(pipe, 500, seed=5, truth=truth)
    wait_exact(pipe, truth, workers=[worker])


@pytest.mark.parametrize(
    "failpoints",
    [
        "lake.before_write=2",  # mid-run, a batch decoded but not written
        "lake.after_write=2",  # the lake commit done, the group offsets not yet committed
        "clickhouse.after_record=2",  # batch boundaries recorded, insert not done
        "clickhouse.after_insert=3",  # inserted, the next batch not yet recorded
    ],
)
def test_kill_9_at_any_step_then_restart_stays_exact(pipe, workers, failpoints):
    truth = Truth()
    worker = workers(pipe, failpoints=failpoints)
    # Traffic keeps coming until the worker dies: however late it joins its group and however much
    # one poll returns, there is always a next batch to reach the armed pass.
    stop = threading.Event()

    def produce_until_stopped() -> None:
        for seed in range(100, 200):
            if stop.is_set():
                return
            produce_simulated(pipe, 1000, seed, truth)
            stop.wait(0.3)

    producing = threading.Thread(target=produce_until_stopped)
    producing.start()
    try:
        wait_for(worker.exited, 120, f"the worker to die at {failpoints}")
    finally:
        stop.set()
        producing.join()
    # A SIGKILL leaves no chance to clean up: the restart finds whatever state the kill left.
    assert worker.proc.returncode == -9
    worker = workers(pipe, name="restarted")
    wait_exact(pipe, truth, workers=[worker], timeout_s=180)


def test_kill_9_at_random_moments_stays_exact(pipe, workers):
    truth = Truth()
    # Traffic keeps coming through every round, so each kill lands on work in flight: batches
    # buffered, being written, or half recorded, in busy and in sparse (telemetry) partitions.
    stop = threading.Event()

    def produce_until_stopped() -> None:
        seed = 700
        while not stop.is_set():
            produce_simulated(pipe, 400, seed, truth)
            seed += 1
            stop.wait(0.2)

    producing = threading.Thread(target=produce_until_stopped)
    producing.start()
    try:
        for round_ in range(3):
            worker = workers(pipe, name=f"round{round_}")
            time.sleep(1.5 + round_)  # let it work a while: the kill lands wherever it lands
            worker.kill9()
    finally:
        stop.set()
        producing.join()
    worker = workers(pipe, name="last")
    wait_exact(pipe, truth, workers=[worker], timeout_s=180)


def test_minio_down_30s_the_worker_waits_resumes_and_stays_exact(stack, stack_overrides, unique, tmp_path, workers):
    # A MinIO of this test's own: stopping it must not disturb the other tests.
    minio_settings = load_settings(**{**stack_overrides, "home": tmp_path / "minio-home",
                                      "minio_address": f"127.0.0.1:{free_port()}"})
    minio = MinioServer(minio_settings)
    minio.up()
    try:
        pipe = load_settings(**{
            **stack_overrides,
            "topic_prefix": f"t.{unique}.", "topic_partitions": 3,
            "lake_uri": f"s3://{minio_settings.minio_bucket}/{unique}",
            "s3_endpoint": minio.endpoint,
            "s3_access_key_id": minio_settings.minio_root_user,
            "s3_secret_access_key": minio_settings.minio_root_password.get_secret_value(),
            "clickhouse_dsn": f"chdb://{tmp_path}/clickhouse",
            "clickhouse_database": "ez_" + uuid.uuid4().hex[:8],
            "lake_flush_seconds": 1.0, "clickhouse_flush_seconds": 0.5, "sink_retry_max_seconds": 2.0,
        })
        ensure_topics(pipe, catalogue(pipe))
        truth = Truth()
        lake = workers(pipe, roles="lake")
        clickhouse = workers(pipe, roles="clickhouse")
        produce_simulated(pipe, 2000, seed=8, truth=truth)
        wait_for(lambda: lake_totals(pipe).get("llm_calls"), 60, "a first lake write")
        rss_before = lake.rss_mb()

        minio.down()
        outage_end = time.monotonic() + 30
        producing = threading.Thread(target=produce_simulated, args=(pipe, 20000, 9, truth))
        producing.start()
        peak = rss_before
        while time.monotonic() < outage_end:
            lake.alive()
            peak = max(peak, lake.rss_mb())
            time.sleep(0.5)
        producing.join()
        assert "retrying" in lake.tail(200)
        minio.up()

        wait_exact(pipe, truth, workers=[lake, clickhouse], timeout_s=180)
        # Paused, the worker buffers one batch at most: its memory stays flat during the outage.
        assert peak - rss_before < 150, (rss_before, peak)
    finally:
        minio.down()


def test_two_workers_with_rebalances_stay_exact(pipe, workers):
    truth = Truth()
    clickhouse = workers(pipe, roles="clickhouse")
    first = workers(pipe, roles="lake", name="lake-1")
    producing = threading.Thread(target=produce_simulated, args=(pipe, 15000, 10, truth))
    producing.start()
    wait_for(lambda: lake_totals(pipe).get("llm_calls"), 60, "the first lake writes")
    second = workers(pipe, roles="lake", name="lake-2")  # joins: partitions move to it
    wait_for(lambda: "assigned" in second.tail(400), 60, "the second worker to get partitions")
    first.stop()  # leaves: its partitions move back
    producing.join()
    wait_exact(pipe, truth, workers=[second, clickhouse], timeout_s=180)
