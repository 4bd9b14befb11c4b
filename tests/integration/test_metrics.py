"""A worker's Prometheus endpoint after a known load: every figure matches what was sent."""

from __future__ import annotations

import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from connectors.kafka import client_config
from connectors.kafka.topics import topic_name
from infra.local.net import free_port
from tests.conftest import wait_for
from tests.integration.pipeline import Truth, Worker, produce_simulated, wait_exact


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of the endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


@pytest.fixture
def pipe(make_pipe):
    return make_pipe(metrics_port=free_port())


def test_metrics_of_a_sink_worker_match_the_load(pipe, tmp_path):
    worker = Worker(pipe, "lake,clickhouse", tmp_path / "worker").start()
    try:
        truth = Truth()
        produce_simulated(pipe, 3000, seed=11, truth=truth)
        raw = Producer(client_config(pipe))
        for _ in range(3):
            raw.produce(topic_name(pipe, "agent.telemetry"), key=b"bad", value=b"not avro")
        assert raw.flush(30) == 0
        wait_exact(pipe, truth, workers=[worker])

        produced = {"agent.tasks": truth.count["task_events"], "agent.llm_calls": truth.count["llm_calls"],
                    "agent.telemetry": truth.count["telemetry"] + 3}
        # Lag comes from librdkafka's statistics, every 5 s: wait for a report after the last commit.
        def settled():
            samples = scrape(pipe.metrics_port)
            lags = {dict(ls)["topic"]: v for (n, ls), v in samples.items()
                    if n == "ezstream_consumer_lag" and dict(ls)["group"] == f"{pipe.topic_prefix}ezstream.lake"}
            return samples if lags and set(lags) >= {topic_name(pipe, t) for t in produced} \
                and not any(lags.values()) else None
        samples = wait_for(settled, 60, "zero lag reported for every partition of the lake group")

        for role in ("lake", "clickhouse"):
            for topic, count in produced.items():
                assert total(samples, "ezstream_events_in_total", role=role, topic=topic) == count
            for table in ("task_events", "llm_calls", "telemetry"):
                assert total(samples, "ezstream_rows_written_total", sink=role, table=table) == truth.count[table]
            assert total(samples, "ezstream_batch_rows_count", sink=role) >= 1
            assert total(samples, "ezstream_batch_rows_sum", sink=role) == sum(produced.values())
            assert total(samples, "ezstream_batch_bytes_sum", sink=role) > 100 * sum(produced.values())
            assert total(samples, "ezstream_flush_seconds_count", sink=role) >= 1
            assert total(samples, "ezstream_paused_partitions", role=role) == 0
            assert total(samples, "ezstream_sink_retries_total", sink=role) == 0
        # Only the lake dead-letters; the ClickHouse role skips the same messages.
        assert total(samples, "ezstream_dead_letters_total", role="lake", topic="agent.telemetry",
                     error_class="BadMarker") == 3
        assert total(samples, "ezstream_dead_letters_total", role="clickhouse") == 0
    finally:
        worker.stop()


def test_status_json_reports_the_brokers_lag_and_dlq_sizes(pipe, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from tests.integration.pipeline import REPO, settings_env

    worker = Worker(pipe, "lake,clickhouse", tmp_path / "worker").start()
    truth = Truth()
    produce_simulated(pipe, 1500, seed=12, truth=truth)
    raw = Producer(client_config(pipe))
    for _ in range(2):
        raw.produce(topic_name(pipe, "agent.tasks"), key=b"bad", value=b"not avro")
    assert raw.flush(30) == 0
    wait_exact(pipe, truth, workers=[worker])
    worker.stop()
    later = Truth()
    produce_simulated(pipe, 700, seed=13, truth=later)  # read by no one: the lag

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("EZ_", "AWS_"))}, **settings_env(pipe),
           "EZ_HOME": str(worker.home), "PYTHONPATH": str(REPO)}
    env.pop("EZ_METRICS_PORT", None)
    done = subprocess.run([sys.executable, "-m", "streams.cli", "status", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    view = json.loads(done.stdout)
    assert not view["errors"], view["errors"]
    group = f"{pipe.topic_prefix}ezstream.lake"
    reported = {(r["topic"], r["partition"]): r["lag"] for r in view["lag"] if r["group"] == group}

    # The broker's own answer: the group's committed offsets against the partition ends.
    admin = AdminClient(client_config(pipe))
    tps = [TopicPartition(t, p) for t, p in reported]
    committed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group].result()
    probe = Consumer(client_config(pipe, **{"group.id": "probe-" + uuid.uuid4().hex}))
    try:
        broker = {}
        for tp in committed.topic_partitions:
            low, high = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            # Never committed: the whole partition is still to be read.
            broker[(tp.topic, tp.partition)] = high - (tp.offset if tp.offset >= 0 else low)
    finally:
        probe.close()
    assert reported == broker
    by_topic = {}
    for (topic, _), n in reported.items():
        by_topic[topic] = by_topic.get(topic, 0) + n
    assert by_topic[topic_name(pipe, "agent.llm_calls")] == later.count["llm_calls"]
    assert by_topic[topic_name(pipe, "agent.tasks")] == later.count["task_events"]
    assert view["dlq"][topic_name(pipe, "agent.tasks") + ".dlq"] == 2
    assert set(view["last_write"]["lake"]) >= {"task_events", "llm_calls", "telemetry"}
